//! The jail: every untrusted command the agents run (a project's test
//! suite, its smoke check, a syntax check that may build it) runs through
//! [`Jail::run`], inside bubblewrap:
//!
//! - a separate unprivileged uid/gid (as root: a real host uid, 65534 by
//!   default, through `setpriv`, with every capability dropped and
//!   `no_new_privs`; not root: a user namespace mapping that uid to the
//!   agent's own);
//! - new network, pid, ipc and uts namespaces: no route to Redis or to
//!   anything else, a private `/proc` showing only the jail's processes;
//! - a read-only root of only what is needed (`/usr`, `/bin`, `/lib*`, a
//!   few files of `/etc`, the toolchains found at start-up), a tmpfs
//!   `/tmp`, the project at `/project` — the only writable bind;
//! - a new session (no terminal to inject into), die-with-parent, and an
//!   environment of a few variables only (nothing of the agent's);
//! - limits: memory and processes through a cgroup when the host has one
//!   (rlimits otherwise), CPU time and file size through rlimits, output
//!   through capture; [`RunOutput::limits`] says which enforced each;
//! - the whole tree killed at the end, at the timeout, and when the run's
//!   future is dropped (a handler timed out or lost its lease): bwrap is
//!   killed, which takes the pid namespace and everything in it, and the
//!   cgroup's processes are killed before it is removed.
//!
//! Where the jail cannot be made, [`Jail::new`] refuses unless the operator
//! asked for `--unsafe-no-jail`: then programs run on the host with the same
//! scrubbed environment and limits, but no namespaces.

mod capture;
mod cgroup;
mod run;
mod toolchain;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toolchain::Toolchains;

/// Largest file a jailed program may write (RLIMIT_FSIZE).
pub const FILE_SIZE_LIMIT: u64 = 1024 * 1024 * 1024;

/// Most bytes [`RunOutput::tail`] returns.
pub const TAIL_BYTES: usize = 8 * 1024;

/// Where the project is inside the jail.
pub const PROJECT_DIR: &str = "/project";

/// The jail's settings: flags of every agent that runs untrusted code.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct JailArgs {
    /// The bubblewrap binary (a name looked up on PATH, or a path).
    #[arg(long, env = "AGENTIC_JAIL_BWRAP", default_value = "bwrap")]
    pub jail_bwrap: PathBuf,
    /// The uid jailed programs run as (a host uid when the agent is root).
    #[arg(long, env = "AGENTIC_JAIL_UID", default_value_t = 65534)]
    pub jail_uid: u32,
    /// The gid jailed programs run as.
    #[arg(long, env = "AGENTIC_JAIL_GID", default_value_t = 65534)]
    pub jail_gid: u32,
    /// Memory of one jailed run, all its processes together (MiB).
    #[arg(long, env = "AGENTIC_JAIL_MEMORY_MIB", default_value_t = 2048)]
    pub jail_memory_mib: u64,
    /// Processes of one jailed run, all together.
    #[arg(long, env = "AGENTIC_JAIL_PIDS", default_value_t = 256)]
    pub jail_pids: u64,
    /// Output kept of one run (KiB): its start and its end.
    #[arg(long, env = "AGENTIC_JAIL_OUTPUT_KIB", default_value_t = 256)]
    pub jail_output_kib: usize,
    /// Run untrusted code WITHOUT the jail (rlimits only): for hosts where
    /// bubblewrap cannot work, when the operator accepts the risk.
    #[arg(long, env = "AGENTIC_UNSAFE_NO_JAIL", value_parser = clap::builder::FalseyValueParser::new())]
    pub unsafe_no_jail: bool,
}

impl Default for JailArgs {
    fn default() -> Self {
        Self {
            jail_bwrap: "bwrap".into(),
            jail_uid: 65534,
            jail_gid: 65534,
            jail_memory_mib: 2048,
            jail_pids: 256,
            jail_output_kib: 256,
            unsafe_no_jail: false,
        }
    }
}

/// Why a jail could not be made or a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail cannot be made here (and the unsafe flag was not given).
    #[error(
        "the jail for untrusted code cannot be made: {0}. This agent runs projects' code and will not \
         run it unjailed: install bubblewrap (Debian: apt-get install bubblewrap) and allow user \
         namespaces, or pass --unsafe-no-jail (AGENTIC_UNSAFE_NO_JAIL=1) to run it with rlimits only"
    )]
    Unavailable(String),
    /// The jail's settings make no sense.
    #[error("bad jail settings: {0}")]
    Settings(String),
    /// A step of a run failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Io { what, source }
}

/// How jailed programs are isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// The agent is root: bwrap, then `setpriv` to a host uid/gid.
    Root { bwrap: PathBuf },
    /// Not root: bwrap in a user namespace mapping the uid to the agent's.
    UserNs { bwrap: PathBuf },
    /// `--unsafe-no-jail`: on the host, limits only.
    Unjailed,
}

/// Which mechanism enforced each limit of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// `bwrap` (namespaces, read-only root, own uid) or `none`.
    pub jail: String,
    /// The uid the program ran as inside.
    pub uid: u32,
    /// `cgroup` (the whole tree) or `rlimit` (per process).
    pub memory: String,
    /// `cgroup` (the whole tree) or `rlimit` (per uid).
    pub pids: String,
    /// `rlimit` (per process).
    pub cpu: String,
    /// `rlimit`.
    pub file_size: String,
    /// `capture` (bytes kept by the agent).
    pub output: String,
}

/// How a jailed run ended.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Exit success.
    pub success: bool,
    /// Killed at the timeout.
    pub timed_out: bool,
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// Standard output and error as one text, within the output limit.
    pub output: String,
    /// Bytes printed in all.
    pub output_bytes: u64,
    /// Whether some of the output was dropped (the text says where).
    pub output_truncated: bool,
    /// What enforced each limit.
    pub limits: Enforcement,
    /// Limits that stopped something (`memory`, `pids`, `output`).
    pub limits_hit: Vec<String>,
}

impl RunOutput {
    /// The last `n` lines of the output, at most [`TAIL_BYTES`] of them
    /// (a suite can print lines of megabytes).
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        if tail.len() <= TAIL_BYTES {
            return tail;
        }
        let mut from = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(from) {
            from += 1;
        }
        format!("[...] {}", &tail[from..])
    }

    /// A summary of the run's limits for a result or an error's details.
    pub fn limits_json(&self) -> serde_json::Value {
        serde_json::json!({
            "enforced_by": self.limits,
            "hit": self.limits_hit,
            "output_bytes": self.output_bytes,
            "output_truncated": self.output_truncated,
        })
    }
}

/// One program to run in a project directory.
#[derive(Debug, Clone)]
pub struct JailCommand {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    project_env: Vec<(String, String)>,
    writable: bool,
    timeout: Duration,
}

impl JailCommand {
    /// `program` (looked up on the jail's PATH), killed after `timeout`;
    /// the project is writable unless [`Self::read_only`].
    pub fn new(program: &str, timeout: Duration) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            project_env: Vec::new(),
            writable: true,
            timeout,
        }
    }

    /// Adds arguments.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets a variable of the program's (otherwise empty) environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets a variable to the path of `rel` in the project as the program
    /// sees it (`/project/<rel>` in the jail).
    pub fn env_project_path(mut self, key: &str, rel: &str) -> Self {
        self.project_env.push((key.to_owned(), rel.to_owned()));
        self
    }

    /// The program may not write to the project (a smoke check).
    pub fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    /// The program's name.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// `program args…`, for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    uid: u32,
    gid: u32,
    memory_bytes: u64,
    pids: u64,
    output_bytes: usize,
    toolchains: Toolchains,
}

/// The jail runner, made once at start-up and shared (cheap to clone).
#[derive(Debug, Clone)]
pub struct Jail {
    inner: Arc<Inner>,
}

fn find_program(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
}

impl Jail {
    /// Makes the jail `args` describe and proves it works (a probe run
    /// must come out as the jail's uid, in its own namespaces). Without
    /// it, refuses ([`JailError::Unavailable`]) unless `unsafe_no_jail`,
    /// which logs a warning and returns an unjailed runner.
    pub async fn new(args: &JailArgs) -> Result<Self, JailError> {
        let toolchains = tokio::task::spawn_blocking(|| {
            cgroup::sweep_stale();
            Toolchains::detect()
        })
        .await
        .unwrap_or_default();
        let make = |mode| Self {
            inner: Arc::new(Inner {
                mode,
                uid: args.jail_uid,
                gid: args.jail_gid,
                memory_bytes: args.jail_memory_mib.saturating_mul(1024 * 1024),
                pids: args.jail_pids,
                output_bytes: args.jail_output_kib.saturating_mul(1024).max(1024),
                toolchains: toolchains.clone(),
            }),
        };
        if args.jail_uid == 0 || args.jail_gid == 0 {
            return Err(JailError::Settings(
                "--jail-uid and --jail-gid must not be 0: jailed code never runs as root".into(),
            ));
        }
        if args.jail_pids < 16 || args.jail_memory_mib < 64 {
            return Err(JailError::Settings(
                "--jail-pids must be at least 16 and --jail-memory-mib at least 64".into(),
            ));
        }
        for tool in ["prlimit", "setpriv"] {
            if find_program(Path::new(tool)).is_none() {
                return Err(JailError::Unavailable(format!(
                    "{tool} (util-linux) is not on PATH"
                )));
            }
        }
        if args.unsafe_no_jail {
            tracing::warn!(
                "--unsafe-no-jail: untrusted code (test suites, smoke checks, builds) runs on this host \
                 WITHOUT the jail: it can read what this agent's user can, reach the network and \
                 Redis, and leave processes behind; only rlimits (and cgroups when available) apply"
            );
            return Ok(make(Mode::Unjailed));
        }
        let bwrap = find_program(&args.jail_bwrap).ok_or_else(|| {
            JailError::Unavailable(format!(
                "bubblewrap ({}) is not installed or not on PATH",
                args.jail_bwrap.display()
            ))
        })?;
        let mode = if rustix::process::geteuid().is_root() {
            Mode::Root { bwrap }
        } else {
            Mode::UserNs { bwrap }
        };
        let jail = make(mode);
        jail.probe().await?;
        Ok(jail)
    }

    /// Runs `id -u` in a jail over an empty project: it must work and
    /// print the jail's uid.
    async fn probe(&self) -> Result<(), JailError> {
        let dir = tempfile::tempdir().map_err(io("making the probe's directory"))?;
        let cmd = JailCommand::new("id", Duration::from_secs(30)).args(["-u"]);
        let out = self
            .run(dir.path(), &cmd)
            .await
            .map_err(|e| JailError::Unavailable(format!("the probe could not start: {e}")))?
            .ok_or_else(|| JailError::Unavailable("`id` is not installed".into()))?;
        let want = self.inner.uid.to_string();
        if out.success && out.output.trim() == want {
            Ok(())
        } else {
            Err(JailError::Unavailable(format!(
                "a probe run failed (want uid {want}): {}",
                out.tail(5)
            )))
        }
    }

    /// Whether programs run jailed (false with `--unsafe-no-jail`).
    pub fn is_jailed(&self) -> bool {
        self.inner.mode != Mode::Unjailed
    }

    /// Whether `program` can run (found on the jail's PATH).
    pub fn has(&self, program: &str) -> bool {
        self.inner.toolchains.has(program)
    }
}
