//! A cgroup (v1 `memory` and `pids` controllers) per jailed run: the limits
//! apply to the whole process tree, whatever it forks, and the tree can be
//! killed through it. Made under the agent's own cgroup when the host shows
//! it (so a pod's limits still bound the jail), else at the controller's
//! root. Each controller is best effort: one that cannot be made leaves
//! that limit to an rlimit, and the run says so.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MOUNT: &str = "/sys/fs/cgroup";

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The cgroup directories of one run; killed and removed when dropped.
#[derive(Debug, Default)]
pub(crate) struct Cgroup {
    pub(crate) memory: Option<PathBuf>,
    pub(crate) pids: Option<PathBuf>,
    removed: bool,
}

/// The agent's own cgroup directory for `controller` (v1), if visible.
fn own_dir(controller: &str) -> Option<PathBuf> {
    let mount = Path::new(MOUNT).join(controller);
    if !mount.join("cgroup.procs").is_file() {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',')
                .any(|c| c == controller)
                .then(|| mount.join(path.trim_start_matches('/')))
        })
        .next()
        .filter(|p| p.is_dir());
    Some(own.unwrap_or(mount))
}

fn make(controller: &str, name: &str, settings: &[(&str, String)]) -> Option<PathBuf> {
    let dir = own_dir(controller)?.join(name);
    std::fs::create_dir(&dir).ok()?;
    for (file, value) in settings {
        let path = dir.join(file);
        // A file the kernel does not offer (memsw without swap accounting)
        // is skipped; one it refuses means the limit is not in force.
        if path.exists() && std::fs::write(&path, value).is_err() && !file.contains("memsw") {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
    }
    Some(dir)
}

/// Kills and removes the cgroups an agent that died (SIGKILL, a crash)
/// left behind: `agentic-jail-<pid>-<n>` whose agent pid is gone.
pub(crate) fn sweep_stale() {
    for controller in ["memory", "pids"] {
        let Some(parent) = own_dir(controller) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("agentic-jail-")
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let mut stale = Cgroup::default();
                let slot = if controller == "memory" {
                    &mut stale.memory
                } else {
                    &mut stale.pids
                };
                *slot = Some(e.path());
                stale.kill_and_remove();
            }
        }
    }
}

impl Cgroup {
    /// Makes the cgroups of one run with these limits (best effort).
    pub(crate) fn create(memory_bytes: u64, pids: u64) -> Self {
        let name = format!(
            "agentic-jail-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let memory = make(
            "memory",
            &name,
            &[
                ("memory.limit_in_bytes", memory_bytes.to_string()),
                ("memory.memsw.limit_in_bytes", memory_bytes.to_string()),
            ],
        );
        let pids = make("pids", &name, &[("pids.max", pids.to_string())]);
        Self {
            memory,
            pids,
            removed: false,
        }
    }

    /// The `cgroup.procs` files a process joins (`/dev/null` for a
    /// controller not in use, so the entering shell needs no branches).
    pub(crate) fn procs_files(&self) -> [PathBuf; 2] {
        let of = |d: &Option<PathBuf>| {
            d.as_ref()
                .map_or_else(|| PathBuf::from("/dev/null"), |d| d.join("cgroup.procs"))
        };
        [of(&self.memory), of(&self.pids)]
    }

    /// The limits that stopped something: `memory` when the OOM killer
    /// killed in the cgroup, `pids` when a fork was refused.
    pub(crate) fn hits(&self) -> Vec<&'static str> {
        let counter = |dir: &Option<PathBuf>, file: &str, key: &str| {
            dir.as_ref()
                .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
                .and_then(|t| {
                    t.lines().find_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
                    })
                })
                .unwrap_or(0)
        };
        let mut hits = Vec::new();
        if counter(&self.memory, "memory.oom_control", "oom_kill") > 0 {
            hits.push("memory");
        }
        if counter(&self.pids, "pids.events", "max") > 0 {
            hits.push("pids");
        }
        hits
    }

    /// Kills every process left in the cgroups and removes them; blocks
    /// while the kernel reaps them (briefly: SIGKILL cannot be caught).
    pub(crate) fn kill_and_remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let dirs: Vec<PathBuf> = [self.memory.take(), self.pids.take()]
            .into_iter()
            .flatten()
            .collect();
        for _ in 0..500 {
            let mut left = false;
            for d in &dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    left = true;
                    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
            }
            if !left
                && dirs
                    .iter()
                    .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(
            ?dirs,
            "jail cgroups could not be removed; their processes would not die"
        );
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.removed || (self.memory.is_none() && self.pids.is_none()) {
            return;
        }
        // Dropped with the run (its handler was dropped): kill and clean up
        // off the async runtime, since it may wait for the kernel to reap.
        let mut rest = Self {
            memory: self.memory.take(),
            pids: self.pids.take(),
            removed: false,
        };
        self.removed = true;
        std::thread::spawn(move || rest.kill_and_remove());
    }
}
