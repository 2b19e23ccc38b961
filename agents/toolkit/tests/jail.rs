//! The jail with real bubblewrap, real processes and real cgroups: what a
//! program inside sees and cannot do, and that nothing it starts outlives
//! its run — at the end, at the timeout, and when the run is dropped.

#![allow(clippy::unwrap_used)]

use agent_toolkit::testing::{alive, wait_all_gone};
use agent_toolkit::{Jail, JailArgs, JailCommand};
use std::path::Path;
use std::time::{Duration, Instant};

async fn jail() -> Jail {
    Jail::new(&JailArgs::default()).await.unwrap()
}

fn sh(script: &str, timeout: Duration) -> JailCommand {
    JailCommand::new("sh", timeout).args(["-c", script])
}

async fn wait_for_file(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_program_runs_as_the_jail_uid_without_network_and_reports_its_limits() {
    let j = jail().await;
    assert!(j.is_jailed());
    let dir = tempfile::tempdir().unwrap();
    let script = "id -u; id -g; cat /proc/net/dev | tail -n +3 | cut -d: -f1; ls /proc | grep -c '^[0-9]'; \
                  touch /project/made && echo wrote-project; touch /usr/x 2>/dev/null || echo usr-read-only; \
                  env | sort";
    let out = j
        .run(dir.path(), &sh(script, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    assert!(out.success, "{}", out.output);
    let lines: Vec<&str> = out.output.lines().collect();
    assert_eq!(&lines[..2], ["65534", "65534"], "{}", out.output);
    // The only interface is the namespace's own loopback.
    assert_eq!(lines[2].trim(), "lo", "{}", out.output);
    assert!(out.output.contains("wrote-project") && out.output.contains("usr-read-only"));
    assert!(dir.path().join("made").exists());
    assert!(
        !out.output.contains("AGENTIC") && !out.output.contains("REDIS"),
        "{}",
        out.output
    );
    assert_eq!(out.limits.jail, "bwrap");
    // A v1 cgroup, where the agent can make one, bounds the whole tree.
    let v1 = Path::new("/sys/fs/cgroup/memory").join(format!("jail-test-{}", std::process::id()));
    let cgroups = std::fs::create_dir(&v1).is_ok() && std::fs::remove_dir(&v1).is_ok();
    let want = if cgroups { "cgroup" } else { "rlimit" };
    assert_eq!(
        (out.limits.memory.as_str(), out.limits.pids.as_str()),
        (want, want)
    );
    assert_eq!(out.limits.cpu, "rlimit");
}

/// A `setsid` daemon beating into the project, then the program hangs.
fn daemon_then_hang(marker: &str) -> String {
    format!(
        "setsid sh -c 'while :; do date > /project/hb; sleep 0.05; done' {marker} & \
         sleep 1000 # {marker}"
    )
}

#[tokio::test]
async fn a_dropped_run_takes_its_whole_tree_with_it() {
    let j = jail().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("jail-drop-{}", std::process::id());
    let cmd = sh(&daemon_then_hang(&marker), Duration::from_secs(600));
    let hb = dir.path().join("hb");
    // The run's future is dropped as the SDK drops a handler (timeout, lost lease).
    tokio::select! {
        r = j.run(dir.path(), &cmd) => panic!("the run ended by itself: {r:?}"),
        () = async {
            wait_for_file(&hb).await;
            // The daemon is alive on the host when the run is dropped.
            assert!(!alive(&marker).is_empty());
        } => {}
    }
    wait_all_gone(&marker).await;
}

#[tokio::test]
async fn the_timeout_kills_the_tree_a_setsid_daemon_included() {
    let j = jail().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("jail-timeout-{}", std::process::id());
    let out = j
        .run(
            dir.path(),
            &sh(&daemon_then_hang(&marker), Duration::from_secs(10)),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(out.timed_out && !out.success, "{out:?}");
    assert!(dir.path().join("hb").exists(), "the daemon never ran");
    wait_all_gone(&marker).await;
}

#[tokio::test]
async fn a_missing_bwrap_is_refused_unless_the_operator_says_unsafe() {
    let missing = JailArgs {
        jail_bwrap: "/nonexistent/bwrap".into(),
        ..JailArgs::default()
    };
    let e = Jail::new(&missing).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot be made")
            && e.contains("/nonexistent/bwrap")
            && e.contains("--unsafe-no-jail"),
        "{e}"
    );
    let unsafe_args = JailArgs {
        unsafe_no_jail: true,
        ..missing
    };
    let j = Jail::new(&unsafe_args).await.unwrap();
    assert!(!j.is_jailed());
    let dir = tempfile::tempdir().unwrap();
    let out = j
        .run(dir.path(), &sh("pwd; echo $HOME", Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    assert!(out.success, "{}", out.output);
    assert!(
        out.output
            .starts_with(&dir.path().to_string_lossy().into_owned()),
        "{}",
        out.output
    );
    assert_eq!(out.limits.jail, "none");
    assert_eq!(out.limits.cpu, "rlimit");
}

/// The agent's own v1 cgroup directory for `controller`, when it can make
/// cgroups there.
fn own_cgroup(controller: &str) -> Option<std::path::PathBuf> {
    let mount = Path::new("/sys/fs/cgroup").join(controller);
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, list, path) = (p.next()?, p.next()?, p.next()?);
            list.split(',')
                .any(|c| c == controller)
                .then(|| mount.join(path.trim_start_matches('/')))
        })
        .filter(|p| p.is_dir())
        .unwrap_or(mount);
    let probe = own.join(format!("jail-test-{}", std::process::id()));
    (std::fs::create_dir(&probe).is_ok() && std::fs::remove_dir(&probe).is_ok()).then_some(own)
}

#[tokio::test]
async fn cgroups_left_by_a_dead_agent_are_removed_at_start() {
    let Some(parent) = own_cgroup("pids") else {
        // No cgroups to leave behind here: the jail still starts.
        assert!(jail().await.is_jailed());
        return;
    };
    // A pid no process has: the agent that made it is gone.
    let dead = (4_000_000..)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let stale = parent.join(format!("agentic-jail-{dead}-0"));
    std::fs::create_dir(&stale).unwrap();
    let live = parent.join(format!("agentic-jail-{}-999999", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    jail().await;
    assert!(!stale.exists(), "{} was left", stale.display());
    assert!(live.exists(), "a live agent's cgroup was removed");
    std::fs::remove_dir(&live).unwrap();
}

#[tokio::test]
async fn jailed_code_never_runs_as_root() {
    for args in [
        JailArgs {
            jail_uid: 0,
            ..JailArgs::default()
        },
        JailArgs {
            jail_gid: 0,
            ..JailArgs::default()
        },
    ] {
        let e = Jail::new(&args).await.unwrap_err().to_string();
        assert!(e.contains("must not be 0"), "{e}");
    }
}
