//! One run of a program in the jail: the command line bubblewrap gets, the
//! cgroup the run joins before bwrap starts, the capture of its output, the
//! timeout, and the killing of everything it started.

use super::capture::Capture;
use super::cgroup::Cgroup;
use super::toolchain::SYSTEM_DIRS;
use super::{
    Enforcement, FILE_SIZE_LIMIT, Jail, JailCommand, JailError, Mode, PROJECT_DIR, RunOutput,
    find_program, io,
};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::Command;

/// Files of `/etc` a toolchain may read; nothing else of `/etc` is seen.
const ETC_FILES: [&str; 10] = [
    "/etc/ssl",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
];

/// Joins the cgroups given as `$1` and `$2`, then becomes the jail: every
/// process bwrap starts is born in them (a shell because `pre_exec` would
/// need `unsafe`).
const ENTER: &str = r#"echo $$ > "$1" && echo $$ > "$2" && shift 2 && exec "$@""#;

/// How long output is still read after the program ended: unjailed, a
/// process left behind may hold the pipe open forever.
const DRAIN: Duration = Duration::from_secs(2);

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chown_tree(&e.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// Kills an unjailed run's process group when the run ends or is dropped.
struct Group(Option<i32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

impl Jail {
    /// The bubblewrap arguments for a run in `dir`, up to the command.
    fn bwrap_args(&self, dir: &Path, writable: bool, env: &[(String, String)]) -> Vec<OsString> {
        let inner = &self.inner;
        let mut a: Vec<OsString> = [
            "--unshare-net",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
        ]
        .map(os)
        .to_vec();
        if let Mode::UserNs { .. } = inner.mode {
            a.extend(["--unshare-user", "--disable-userns"].map(os));
            a.extend([os("--uid"), os(inner.uid.to_string())]);
            a.extend([os("--gid"), os(inner.gid.to_string())]);
        }
        for d in SYSTEM_DIRS {
            let p = Path::new(d);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(p) {
                        a.extend([os("--symlink"), target.into(), os(d)]);
                    }
                }
                Ok(m) if m.is_dir() => a.extend([os("--ro-bind"), os(d), os(d)]),
                _ => {}
            }
        }
        a.extend(["--perms", "0755", "--dir", "/etc"].map(os));
        for f in ETC_FILES {
            a.extend([os("--ro-bind-try"), os(f), os(f)]);
        }
        // bwrap would make a bind's missing parents with the host's modes
        // (`/root` 0700, closed to the jail's uid): make them 0755 first.
        let mut made: Vec<&Path> = Vec::new();
        for b in &inner.toolchains.binds {
            let mut parents: Vec<&Path> = b.ancestors().skip(1).collect();
            parents.reverse();
            for p in parents.into_iter().skip(1) {
                if !made.contains(&p) {
                    made.push(p);
                    a.extend([os("--perms"), os("0755"), os("--dir"), p.into()]);
                }
            }
            a.extend([os("--ro-bind"), b.into(), b.into()]);
        }
        // /tmp as on any host (1777: bwrap's default 0755 is root's only),
        // no larger than the memory limit (its pages count in the cgroup too).
        a.extend(["--dev", "/dev", "--proc", "/proc", "--perms", "1777"].map(os));
        a.extend([os("--size"), os(inner.memory_bytes.to_string())]);
        a.extend(["--tmpfs", "/tmp"].map(os));
        let bind = if writable { "--bind" } else { "--ro-bind" };
        a.extend([os(bind), dir.into(), os(PROJECT_DIR)]);
        // The root bwrap builds (a tmpfs holding the mount points, /etc's
        // among them) is read-only too: in a user namespace the jail's uid
        // would own it.
        a.extend([os("--remount-ro"), os("/")]);
        a.extend([os("--chdir"), os(PROJECT_DIR), os("--clearenv")]);
        for (k, v) in env {
            a.extend([os("--setenv"), os(k), os(v)]);
        }
        a
    }

    /// Runs `cmd` in the project at `dir` (see the module docs). `Ok(None)`:
    /// the program is not installed.
    pub async fn run(&self, dir: &Path, cmd: &JailCommand) -> Result<Option<RunOutput>, JailError> {
        let inner = &self.inner;
        let Some(program) = std::env::split_paths(&inner.toolchains.path())
            .map(|d| d.join(&cmd.program))
            .find(|p| p.is_file())
        else {
            return Ok(None);
        };
        let jailed = inner.mode != Mode::Unjailed;
        let chown = matches!(inner.mode, Mode::Root { .. }) && cmd.writable;
        let (uid, gid, mem, pids) = (inner.uid, inner.gid, inner.memory_bytes, inner.pids);
        let owned = dir.to_owned();
        let mut cgroup = tokio::task::spawn_blocking(move || {
            if chown {
                // The jail's uid must own what it may write; nothing else.
                chown_tree(&owned, uid, gid)?;
            }
            Ok::<_, std::io::Error>(Cgroup::create(mem, pids))
        })
        .await
        .map_err(|e| JailError::Io {
            what: "preparing the jail",
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(io("giving the project to the jail's uid"))?;

        // Unjailed, the program gets a private HOME on the host.
        let home = if jailed {
            None
        } else {
            Some(tempfile::tempdir().map_err(io("making a home directory"))?)
        };
        let (root_in, tmp_in) = match &home {
            Some(h) => (dir.to_owned(), h.path().to_owned()),
            None => (PathBuf::from(PROJECT_DIR), PathBuf::from("/tmp")),
        };
        let tmp = tmp_in.to_string_lossy().into_owned();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), inner.toolchains.path()),
            ("HOME".into(), tmp.clone()),
            ("TMPDIR".into(), tmp.clone()),
            ("LANG".into(), "C.UTF-8".into()),
            ("CARGO_HOME".into(), format!("{tmp}/.cargo")),
        ];
        env.extend(cmd.env.iter().cloned());
        for (k, rel) in &cmd.project_env {
            env.push((k.clone(), root_in.join(rel).to_string_lossy().into_owned()));
        }

        // Limits the cgroup does not enforce fall to rlimits, set by
        // prlimit right before the program (after the uid changed).
        let cpu = cmd.timeout.as_secs().max(1) * 2;
        let mut limits: Vec<OsString> = vec![
            os(format!("--cpu={cpu}")),
            os(format!("--fsize={FILE_SIZE_LIMIT}")),
            os("--core=0"),
        ];
        if cgroup.pids.is_none() {
            limits.push(os(format!("--nproc={pids}")));
        }
        if cgroup.memory.is_none() {
            limits.push(os(format!("--data={mem}")));
        }
        let prlimit = find_program(Path::new("prlimit")).unwrap_or_else(|| "prlimit".into());
        let mut inside: Vec<OsString> = Vec::new();
        if let Mode::Root { .. } = inner.mode {
            let setpriv = find_program(Path::new("setpriv")).unwrap_or_else(|| "setpriv".into());
            inside.push(setpriv.into());
            inside.extend([
                os(format!("--reuid={uid}")),
                os(format!("--regid={gid}")),
                os("--clear-groups"),
                os("--inh-caps=-all"),
                os("--bounding-set=-all"),
                os("--no-new-privs"),
                os("--"),
            ]);
        }
        inside.push(prlimit.into());
        inside.extend(limits);
        inside.push(os("--"));
        inside.push(program.into());
        inside.extend(cmd.args.iter().map(os));

        let procs = cgroup.procs_files();
        let in_cgroup = cgroup.memory.is_some() || cgroup.pids.is_some();
        let mut argv: Vec<OsString> = Vec::new();
        if in_cgroup {
            argv.extend([os("/bin/sh"), os("-c"), os(ENTER), os("jail-enter")]);
            argv.extend(procs.iter().map(|p| p.into()));
        }
        match &inner.mode {
            Mode::Root { bwrap } | Mode::UserNs { bwrap } => {
                argv.push(bwrap.into());
                argv.extend(self.bwrap_args(dir, cmd.writable, &env));
                argv.push(os("--"));
            }
            Mode::Unjailed => {}
        }
        argv.extend(inside);

        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]).env_clear().kill_on_drop(true);
        if jailed {
            c.current_dir("/");
        } else {
            c.current_dir(dir).envs(env.iter().map(|(k, v)| (k, v)));
            c.process_group(0);
        }
        let (reader, writer) = std::io::pipe().map_err(io("making the output pipe"))?;
        let writer2 = writer.try_clone().map_err(io("making the output pipe"))?;
        c.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        let mut child = c.spawn().map_err(io("starting the jail"))?;
        // Our copies of the pipe's write end must close, or EOF never comes.
        drop(c);
        let mut group = Group(if jailed {
            None
        } else {
            child.id().and_then(|p| i32::try_from(p).ok())
        });
        let mut rx =
            pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(io("reading output"))?;

        let mut capture = Capture::new(inner.output_bytes);
        let mut buf = vec![0u8; 64 * 1024];
        let mut eof = false;
        let mut timed_out = false;
        let deadline = tokio::time::sleep(cmd.timeout);
        tokio::pin!(deadline);
        let status = loop {
            tokio::select! {
                r = rx.read(&mut buf), if !eof => match r {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => capture.push(&buf[..n]),
                },
                s = child.wait() => break s.map_err(io("waiting for the jail"))?,
                _ = &mut deadline, if !timed_out => {
                    timed_out = true;
                    // Killing bwrap takes its pid namespace: every process in it.
                    let _ = child.start_kill();
                },
            }
        };
        group.kill();
        let mut hits: Vec<String> = cgroup.hits().into_iter().map(str::to_owned).collect();
        let uses = |on: bool| if on { "cgroup" } else { "rlimit" }.to_owned();
        let limits = Enforcement {
            jail: if jailed { "bwrap" } else { "none" }.into(),
            uid: if jailed {
                uid
            } else {
                rustix::process::geteuid().as_raw()
            },
            memory: uses(cgroup.memory.is_some()),
            pids: uses(cgroup.pids.is_some()),
            cpu: "rlimit".into(),
            file_size: "rlimit".into(),
            output: "capture".into(),
        };
        let _ = tokio::task::spawn_blocking(move || cgroup.kill_and_remove()).await;
        let _ = tokio::time::timeout(DRAIN, async {
            while !eof {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => capture.push(&buf[..n]),
                }
            }
        })
        .await;
        let (output, output_bytes, output_truncated) = capture.finish();
        if output_truncated {
            hits.push("output".into());
        }
        Ok(Some(RunOutput {
            success: status.success() && !timed_out,
            timed_out,
            code: status.code(),
            output,
            output_bytes,
            output_truncated,
            limits,
            limits_hit: hits,
        }))
    }
}
