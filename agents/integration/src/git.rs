//! Git without ambient configuration: the one way this agent runs git.
//!
//! The trees committed come from whoever submitted the workflow, so nothing
//! in them, in the agent's environment or in the machine's configuration
//! may change what git runs. Every call:
//!
//! - has an empty environment but `PATH`, with `HOME` and `XDG_CONFIG_HOME`
//!   a private empty directory, `GIT_CONFIG_GLOBAL=/dev/null` and
//!   `GIT_CONFIG_NOSYSTEM=1` (no user or system config: a `.gitconfig` in a
//!   work tree is just a file), `GIT_ATTR_NOSYSTEM=1`,
//!   `GIT_CEILING_DIRECTORIES` the repository's parent (git never looks for
//!   a repository above it) and no terminal prompt;
//! - reads attributes from the empty tree (`attr.tree`) and
//!   `core.attributesFile=/dev/null`, so a `.gitattributes` in the work tree
//!   or in a commit selects no filter, diff or merge driver;
//! - has hooks off (`core.hooksPath=/dev/null`), fsmonitor off, every
//!   transport protocol refused (`protocol.allow=never`,
//!   `GIT_PROTOCOL_FROM_USER=0`: no submodule fetch), no submodule
//!   recursion, and no implicit bare repository (`safe.bareRepository`);
//! - runs without a shell, its arguments given one by one.
//!
//! What stays trusted is the repository's own `.git` directory, which only
//! this agent writes (no artifact may hold a `.git`, see
//! `agent_sdk::schemas::tree_path`). Git's ownership check
//! (`safe.directory`) is kept: the repositories belong to the agent's user.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The empty tree's id (SHA-1 repositories): git resolves it in any
/// repository, so attributes read from it are none.
const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/// Configuration given on every call's command line; it overrides the
/// repository's own.
const OVERRIDES: [&str; 9] = [
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.attributesFile=/dev/null",
    "protocol.allow=never",
    "submodule.recurse=false",
    "safe.bareRepository=explicit",
    "credential.helper=",
    "core.sshCommand=false",
    "gc.autoDetach=false",
];

/// A git failure: the command and what it printed.
#[derive(Debug)]
pub struct GitError(pub String);

/// Runs git in one repository's work tree (see the module docs).
#[derive(Debug)]
pub struct Git {
    repo: PathBuf,
    home: tempfile::TempDir,
}

impl Git {
    /// Git for the work tree at `repo`, with a fresh private home.
    pub fn new(repo: &Path) -> std::io::Result<Self> {
        Ok(Self {
            repo: repo.to_owned(),
            home: tempfile::Builder::new().prefix("git-home-").tempdir()?,
        })
    }

    /// The command `git <args>` would run, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        for c in OVERRIDES {
            cmd.arg("-c").arg(c);
        }
        cmd.arg("-c").arg(format!("attr.tree={EMPTY_TREE}"));
        cmd.args(args)
            .current_dir(&self.repo)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env("GIT_PROTOCOL_FROM_USER", "0")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "integration-agent")
            .env("GIT_AUTHOR_EMAIL", "integration-agent@localhost")
            .env("GIT_COMMITTER_NAME", "integration-agent")
            .env("GIT_COMMITTER_EMAIL", "integration-agent@localhost")
            .env("GIT_AUTHOR_DATE", "2000-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2000-01-01T00:00:00Z");
        // Git ignores a relative ceiling, so it is made absolute.
        if let Some(parent) = std::path::absolute(&self.repo)
            .ok()
            .and_then(|r| r.parent().map(Path::to_owned))
        {
            cmd.env("GIT_CEILING_DIRECTORIES", parent);
        }
        cmd
    }

    /// Runs `git <args>`; its standard output, trimmed.
    pub fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let out = self
            .command(args)
            .output()
            .map_err(|e| GitError(format!("git {}: {e}", args.join(" "))))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(GitError(format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ambient_configuration_reaches_git() {
        let dir = tempfile::tempdir().unwrap();
        let git = Git::new(dir.path()).unwrap();
        git.run(&["init", "-q", "-b", "main"]).unwrap();
        // What git reports as in force: only the repository's own file and
        // the command line, and the overrides win.
        let origins = git
            .run(&["config", "--list", "--show-origin", "--show-scope"])
            .unwrap();
        for line in origins.lines() {
            assert!(
                line.starts_with("local\t") || line.starts_with("command\t"),
                "{line}"
            );
        }
        assert_eq!(git.run(&["config", "core.hooksPath"]).unwrap(), "/dev/null");
        assert_eq!(
            git.run(&["config", "attr.tree"]).unwrap(),
            EMPTY_TREE,
            "attributes come from the empty tree"
        );
        // The private home is empty and not the work tree.
        assert_ne!(git.home.path(), dir.path());
        assert_eq!(std::fs::read_dir(git.home.path()).unwrap().count(), 0);
    }

    #[test]
    fn git_never_finds_a_repository_above_the_project_directory() {
        // A repository around the repos directory (say, a checkout the
        // agent runs in) is not the project's: git stops at the ceiling.
        let outer = tempfile::tempdir().unwrap();
        Git::new(outer.path())
            .unwrap()
            .run(&["init", "-q"])
            .unwrap();
        let repo = outer.path().join("repos/shop");
        std::fs::create_dir_all(&repo).unwrap();
        let e = Git::new(&repo)
            .unwrap()
            .run(&["rev-parse", "--git-dir"])
            .unwrap_err();
        assert!(e.0.contains("not a git repository"), "{}", e.0);
    }
}
