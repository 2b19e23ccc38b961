//! The name rules of a file inside a project tree: what an artifact may
//! hold, whoever packed it, and what a scaffold may be asked to write.
//!
//! A project tree comes from whoever submitted the workflow, and later
//! stages hand its file names to programs (`node --check`, `git add`) and
//! commit it into a git repository. So a path is refused when any of its
//! components:
//!
//! - is empty, `.` or `..`, or the path is absolute (it must stay inside the
//!   tree);
//! - starts with `-` (a program could read it as an option);
//! - holds a control character (names stay one line in messages and in
//!   git's output);
//! - is git's own: `.git` (a directory or a `gitdir:` file, at any depth),
//!   `.gitmodules` (submodules), `.gitattributes` (filters and diff or merge
//!   drivers run on `git add` and checkout) or `.gitconfig`; compared
//!   ignoring ASCII case and trailing dots and spaces, and with the 8.3 alias
//!   `git~1`, as git itself does on file systems that fold them;
//! - or the path is hooks-shaped: a file named like a git hook
//!   (`pre-commit`, `post-checkout`, …) in a directory named `hooks`,
//!   `.githooks` or `.husky`.

use crate::{Error, Result};
use std::path::{Component, Path};

/// Longest path accepted, in bytes.
pub const MAX_TREE_PATH_LEN: usize = 1024;

/// Names git reads from a work tree, compared after [`fold`].
const GIT_NAMES: [&str; 5] = [
    ".git",
    "git~1",
    ".gitmodules",
    ".gitattributes",
    ".gitconfig",
];

/// Directories whose files a hook manager points `core.hooksPath` at.
const HOOK_DIRS: [&str; 3] = ["hooks", ".githooks", ".husky"];

/// The hooks git runs (`githooks(5)`), compared after [`fold`].
const HOOKS: [&str; 28] = [
    "applypatch-msg",
    "pre-applypatch",
    "post-applypatch",
    "pre-commit",
    "pre-merge-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "pre-rebase",
    "post-checkout",
    "post-merge",
    "pre-push",
    "pre-receive",
    "update",
    "proc-receive",
    "post-receive",
    "post-update",
    "reference-transaction",
    "push-to-checkout",
    "pre-auto-gc",
    "post-rewrite",
    "sendemail-validate",
    "fsmonitor-watchman",
    "p4-changelist",
    "p4-prepare-changelist",
    "p4-post-changelist",
    "p4-pre-submit",
    "post-index-change",
];

/// A component as a case-folding, trailing-dot-trimming file system sees
/// it: `.GIT.` and `.git ` are `.git` there.
fn fold(name: &str) -> String {
    name.trim_end_matches(['.', ' ']).to_ascii_lowercase()
}

fn refuse(path: &Path, why: &'static str) -> Error {
    Error::InvalidName {
        what: "project file path",
        value: path.to_string_lossy().chars().take(200).collect(),
        why,
    }
}

/// Checks `path`, relative to a project root, against the rules of this
/// module; the error names the path and the rule it breaks.
pub fn check_tree_path(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(refuse(path, "is empty"));
    }
    if path.as_os_str().len() > MAX_TREE_PATH_LEN {
        return Err(refuse(path, "is over 1024 bytes"));
    }
    let mut names = Vec::new();
    for c in path.components() {
        let name = match c {
            Component::Normal(n) => n.to_string_lossy(),
            Component::ParentDir => return Err(refuse(path, "climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(path, "is absolute"));
            }
            // `Path::components` drops inner `.`; a leading one is harmless.
            Component::CurDir => continue,
        };
        if name.starts_with('-') {
            return Err(refuse(
                path,
                "has a component starting with '-', which a program could read as an option",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(refuse(path, "holds a control character"));
        }
        if GIT_NAMES.contains(&fold(&name).as_str()) {
            return Err(refuse(
                path,
                "is git's own (.git, .gitmodules, .gitattributes or .gitconfig): \
                 git would read it as configuration, submodules or filters",
            ));
        }
        names.push(name);
    }
    if let [.., dir, file] = names.as_slice()
        && HOOK_DIRS.contains(&fold(dir).as_str())
        && HOOKS.contains(&fold(file).as_str())
    {
        return Err(refuse(path, "is a git hook"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &str) -> String {
        check_tree_path(Path::new(p)).expect_err(p).to_string()
    }

    #[test]
    fn ordinary_project_files_pass() {
        for ok in [
            "README.md",
            "src/lib.rs",
            ".gitignore",
            "docs/a-b/c.md",
            "x-",
            "src/hooks/useThing.js",
            "hooks/README.md",
            "./src/index.js",
            ".github/workflows/ci.yml",
            "git/HEAD",
        ] {
            assert!(check_tree_path(Path::new(ok)).is_ok(), "{ok} refused");
        }
    }

    #[test]
    fn option_shaped_git_shaped_and_hook_shaped_names_are_refused_naming_the_file() {
        for (bad, why) in [
            ("--require=evil.js", "starting with '-'"),
            ("src/-rf", "starting with '-'"),
            (".git", "git's own"),
            (".git/config", "git's own"),
            ("vendor/lib/.git", "git's own"),
            (".GIT./hooks/pre-commit", "git's own"),
            ("GIT~1/config", "git's own"),
            ("a/.gitattributes", "git's own"),
            (".gitmodules", "git's own"),
            (".gitconfig", "git's own"),
            ("hooks/pre-commit", "git hook"),
            (".husky/pre-push", "git hook"),
            ("tools/.githooks/post-checkout", "git hook"),
            ("a\nb", "control character"),
            ("../x", "climbs out"),
            ("a/../../x", "climbs out"),
            ("/etc/passwd", "absolute"),
            ("", "empty"),
        ] {
            let e = refused(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("project file path"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "names the file: {e}");
        }
        assert!(refused(&"a/".repeat(600)).contains("over 1024"));
    }
}
