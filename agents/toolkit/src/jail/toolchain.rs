//! Where the toolchains the agents run live on this host, found once at
//! start-up (by asking each toolchain, in a neutral directory, never a
//! project's), so a jail can bind exactly those directories read-only and
//! put their `bin` first on its `PATH`.
//!
//! Rust is run from its sysroot directly (`<sysroot>/bin/cargo`), not
//! through rustup's proxies, so a project's `rust-toolchain.toml` cannot
//! make the jail fetch or pick another toolchain. Python behind pyenv
//! shims is run as the interpreter the shim resolves to.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Directories of the system, bound read-only in every jail.
pub(crate) const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// The toolchains found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Toolchains {
    /// Directories to bind read-only beyond [`SYSTEM_DIRS`].
    pub(crate) binds: Vec<PathBuf>,
    /// Directories first on the jail's `PATH`, in order.
    pub(crate) bin_dirs: Vec<PathBuf>,
}

fn under_system(p: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| p.starts_with(d))
}

/// Runs `program args` in `/` with the agent's environment; its first
/// lines of output when it succeeds.
fn ask(program: &str, args: &[&str]) -> Option<Vec<String>> {
    let out = Command::new(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    })
}

impl Toolchains {
    /// Asks rustc, python3 and node where they live; one that is missing
    /// is left out (its program is then "not installed" for the jail).
    pub(crate) fn detect() -> Self {
        let mut t = Self::default();
        if let Some(sysroot) = ask("rustc", &["--print", "sysroot"])
            .and_then(|l| l.into_iter().next())
            .map(PathBuf::from)
            .filter(|s| s.join("bin/cargo").is_file())
        {
            t.add(&sysroot, sysroot.join("bin"));
        }
        let py = "import sys; print(sys.executable); print(sys.base_prefix)";
        if let Some(lines) = ask("python3", &["-c", py])
            && let [exe, prefix, ..] = lines.as_slice()
            && let Some(bin) = Path::new(exe).parent()
        {
            t.add(Path::new(prefix), bin.to_owned());
        }
        if let Some(exe) =
            ask("node", &["-p", "process.execPath"]).and_then(|l| l.into_iter().next())
            && let Some(bin) = Path::new(&exe).parent()
            && let Some(prefix) = bin.parent()
        {
            t.add(prefix, bin.to_owned());
        }
        t
    }

    fn add(&mut self, prefix: &Path, bin: PathBuf) {
        if !under_system(prefix) && !self.binds.iter().any(|b| prefix.starts_with(b)) {
            self.binds.push(prefix.to_owned());
        }
        if !under_system(&bin) && !self.bin_dirs.contains(&bin) {
            self.bin_dirs.push(bin);
        }
    }

    /// The jail's `PATH`: the toolchains' directories, then the system's.
    pub(crate) fn path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .chain(["/usr/local/bin", "/usr/bin", "/bin"].map(str::to_owned))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Whether `program` is on the jail's `PATH` (the same paths on the host).
    pub(crate) fn has(&self, program: &str) -> bool {
        std::env::split_paths(&self.path()).any(|d| d.join(program).is_file())
    }
}
