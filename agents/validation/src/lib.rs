//! `validation-agent`: unpacks a project artifact into a private temporary
//! directory and checks it — a manifest for its language that parses, the
//! files that language needs, name rules, file sizes, a secret scan, and the
//! language's own syntax check when its toolchain is installed. Syntax
//! checks run the project's code (`cargo check` builds `build.rs` and proc
//! macros), so they run in the [`Jail`]; a file name is passed as `./name`,
//! never as something a program could take for an option, and Python runs
//! isolated (`-I`: no project file shadows `py_compile`).
//!
//! Input: `{"artifact": "<sha256>"}`, or, as a workflow stage, the artifact
//! of the stage it depends on (see [`agent_toolkit::artifact_of`]); an input
//! that is neither is refused as invalid input. Output: the
//! findings (file, line, severity, rule, message). Any error-level finding
//! fails the task permanently, carrying the findings in its details.
//!
//! File names are input too. Before unpacking, every path of the archive
//! is held to the artifact store's name rules
//! (`agent_sdk::schemas::tree_path`: no component starting with `-`, no
//! `.git` at any depth, `.gitmodules`, `.gitattributes`, `.gitconfig` or
//! git hook); each one that breaks them is an error finding of rule
//! `file_name` naming the file, and nothing is unpacked or run.
//! [`check_tree`] applies the same rule to a tree on disk. A name never
//! becomes an option of a checker: `node --check -- ./<file>`,
//! `python3 -I -m py_compile ./<file>` (`-I`: a project's own
//! `py_compile.py` is not imported) and
//! `cargo check --manifest-path ./Cargo.toml`.

use agent_sdk::artifacts::refused_names;
use agent_sdk::schemas::TaskInput;
use agent_sdk::{Agent, AgentError, Artifacts, TaskContext};
pub use agent_toolkit::Language;
use agent_toolkit::{
    ArtifactRequest, Checked, Enforcement, Jail, JailCommand, Unread, artifact_of, unpack_private,
};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

/// Largest file accepted in a project.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// How long one syntax check may run.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information (a check that could not run).
    Info,
    /// Worth fixing; does not fail the stage.
    Warning,
    /// Fails the stage.
    Error,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// File, relative to the project root (empty for the project as a whole).
    pub file: String,
    /// Line, 1-based, when it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// How bad.
    pub severity: Severity,
    /// Stable rule name (`secret`, `manifest`, `syntax`, …).
    pub rule: String,
    /// For people.
    pub message: String,
}

fn finding(
    file: &str,
    line: Option<usize>,
    severity: Severity,
    rule: &str,
    message: impl Into<String>,
) -> Finding {
    Finding {
        file: file.to_owned(),
        line,
        severity,
        rule: rule.to_owned(),
        message: message.into(),
    }
}

/// What the agent returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The artifact checked.
    pub artifact: String,
    /// Its language, when a manifest said.
    pub language: Option<Language>,
    /// Files looked at.
    pub files: usize,
    /// Everything found, errors first.
    pub findings: Vec<Finding>,
    /// What enforced the limits of the jailed syntax checks, when any ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Enforcement>,
}

/// Secret patterns: (rule detail, pattern). Kept strict to avoid noise.
static SECRETS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [
        ("private key", r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----"),
        ("AWS access key id", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
        (
            "AWS secret access key",
            r#"(?i)aws_secret_access_key\s*[=:]\s*["']?[A-Za-z0-9/+=]{40}"#,
        ),
        ("GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
        ("Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
        ("Google API key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
    ]
    .into_iter()
    .filter_map(|(name, re)| Regex::new(re).ok().map(|r| (name, r)))
    .collect()
});

static NAME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$").ok());

fn files_under(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Error findings of rule `file_name` for every path under `root` that
/// breaks the name rules (the topmost only: nothing below a refused
/// directory is listed); their files, to be left unchecked.
fn bad_names(root: &Path) -> std::io::Result<Vec<Finding>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(root.join(&d))? {
            let e = e?;
            let relative = d.join(e.file_name());
            match agent_sdk::schemas::check_tree_path(&relative) {
                Err(agent_sdk::schemas::Error::InvalidName { why, .. }) => {
                    out.push(name_finding(&relative.to_string_lossy(), why));
                }
                _ if e.file_type()?.is_dir() => stack.push(relative),
                _ => {}
            }
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

fn name_finding(file: &str, why: &str) -> Finding {
    finding(
        file,
        None,
        Severity::Error,
        "file_name",
        format!("file name refused: it {why}"),
    )
}

/// A relative file as an argument no program reads as an option.
fn dot_slash(name: &str) -> String {
    format!("./{name}")
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// The syntax check of `file` (relative to the project root; ignored for
/// Rust, whose check is the whole crate's): program and arguments. A file
/// name is always after `--` or behind `./`, so it is never an option; the
/// interpreter never imports from the project on its own (`python3 -I`).
pub fn syntax_command(language: Language, file: &str) -> (&'static str, Vec<String>) {
    let strs = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match language {
        Language::Rust => (
            "cargo",
            strs(&[
                "check",
                "--offline",
                "--quiet",
                "--all-targets",
                "--manifest-path",
                "./Cargo.toml",
            ]),
        ),
        // -I: isolated, so the project directory is not on the path and a
        // project's own `py_compile.py` is not imported.
        Language::Python => (
            "python3",
            strs(&["-I", "-m", "py_compile", &dot_slash(file)]),
        ),
        Language::Node => ("node", strs(&["--check", "--", &dot_slash(file)])),
    }
}

/// A syntax check to run in the jail: the file it is about and the command.
#[derive(Debug)]
struct Syntax {
    file: String,
    cmd: JailCommand,
}

fn syntax(file: &str, language: Language, plan: &mut Vec<Syntax>) {
    let (program, args) = syntax_command(language, file);
    let cmd = JailCommand::new(program, CHECK_TIMEOUT)
        .args(&args)
        .env_project_path("CARGO_TARGET_DIR", ".validation-target")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    plan.push(Syntax {
        file: file.to_owned(),
        cmd,
    });
}

/// Runs one syntax check in `jail`; what enforced its limits, when it ran.
async fn run_syntax(
    jail: &Jail,
    dir: &Path,
    check: &Syntax,
    out: &mut Vec<Finding>,
) -> Option<Enforcement> {
    let (file, program) = (check.file.as_str(), check.cmd.program());
    let hit = |r: &agent_toolkit::RunOutput| {
        if r.limits_hit.is_empty() {
            String::new()
        } else {
            format!(" (limits hit: {})", r.limits_hit.join(", "))
        }
    };
    match jail.run(dir, &check.cmd).await {
        Ok(None) => {
            out.push(finding(
                file,
                None,
                Severity::Info,
                "syntax",
                format!("{program} is not installed: syntax not checked"),
            ));
            None
        }
        Err(e) => {
            out.push(finding(
                file,
                None,
                Severity::Warning,
                "syntax",
                format!("{program} could not run: {e}"),
            ));
            None
        }
        Ok(Some(r)) => {
            if r.timed_out {
                out.push(finding(
                    file,
                    None,
                    Severity::Error,
                    "syntax",
                    format!("{program} ran over {CHECK_TIMEOUT:?}{}", hit(&r)),
                ));
            } else if !r.success {
                let message = format!("{}{}", r.tail(20), hit(&r));
                out.push(finding(file, None, Severity::Error, "syntax", message));
            }
            Some(r.limits)
        }
    }
}

/// Parses the manifest `file` (TOML, or JSON for `package.json`) and checks
/// the name under `section` (the top level when `None`).
fn check_manifest(root: &Path, file: &str, section: Option<&str>, out: &mut Vec<Finding>) {
    let bad = |rule: &str, m: String| finding(file, None, Severity::Error, rule, m);
    let text = match std::fs::read_to_string(root.join(file)) {
        Ok(t) => t,
        Err(e) => return out.push(bad("manifest", e.to_string())),
    };
    let parsed: Result<Value, String> = if file.ends_with(".json") {
        serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))
    } else {
        text.parse::<toml::Table>()
            .map_err(|e| format!("not valid TOML: {e}"))
            .and_then(|t| serde_json::to_value(t).map_err(|e| e.to_string()))
    };
    let v = match parsed {
        Ok(v) => v,
        Err(m) => return out.push(bad("manifest", m)),
    };
    let table = section.map_or(&v, |s| &v[s]);
    match table["name"].as_str() {
        Some(n) if NAME.as_ref().is_some_and(|re| re.is_match(n)) && n.len() <= 64 => {}
        Some(n) => out.push(bad("name", format!("name {n:?} breaks the name rules"))),
        None => out.push(bad(
            "manifest",
            match section {
                Some(s) => format!("no [{s}] name"),
                None => "no \"name\"".to_owned(),
            },
        )),
    }
}

/// What a check of a project found: its language, its number of files,
/// the findings, and what enforced the limits of its jailed checks.
pub type CheckedTree = (Option<Language>, usize, Vec<Finding>, Option<Enforcement>);

/// Checks the project unpacked at `root`, running its syntax checks in `jail`.
pub async fn check_tree(root: &Path, jail: &Jail) -> std::io::Result<CheckedTree> {
    let owned = root.to_owned();
    let (language, files, mut out, plan) = tokio::task::spawn_blocking(move || plan_tree(&owned))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    let mut limits = None;
    for check in &plan {
        limits = run_syntax(jail, root, check, &mut out).await.or(limits);
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.file.cmp(&b.file))
            .then(a.line.cmp(&b.line))
    });
    Ok((language, files, out, limits))
}

/// What reading a project found, and the syntax checks still to run.
type Planned = (Option<Language>, usize, Vec<Finding>, Vec<Syntax>);

/// The checks that read the project's files, and the syntax checks to run.
fn plan_tree(root: &Path) -> std::io::Result<Planned> {
    let mut plan = Vec::new();
    let mut out = bad_names(root)?;
    let refused: Vec<PathBuf> = out.iter().map(|f| root.join(&f.file)).collect();
    // A refused file is named, never read or handed to a checker.
    let files: Vec<PathBuf> = files_under(root)?
        .into_iter()
        .filter(|p| !refused.iter().any(|r| p.starts_with(r)))
        .collect();
    let has = |p: &str| root.join(p).is_file();
    let language = Language::detect(root);

    // Sizes and secrets, file by file.
    for p in &files {
        let name = rel(root, p);
        let len = std::fs::metadata(p)?.len();
        if len > MAX_FILE_BYTES {
            out.push(finding(
                &name,
                None,
                Severity::Error,
                "size",
                format!("{len} bytes, over the limit of {MAX_FILE_BYTES}"),
            ));
            continue;
        }
        let Ok(text) = std::fs::read_to_string(p) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            for (what, re) in SECRETS.iter() {
                if re.is_match(line) {
                    out.push(finding(
                        &name,
                        Some(i + 1),
                        Severity::Error,
                        "secret",
                        format!("looks like a {what}; keep secrets out of the repository"),
                    ));
                }
            }
        }
    }
    if !has("README.md") {
        out.push(finding(
            "README.md",
            None,
            Severity::Warning,
            "required_file",
            "no README.md",
        ));
    }

    // The manifest, its name, and what the language needs.
    match language {
        None => out.push(finding(
            "",
            None,
            Severity::Error,
            "manifest",
            "no Cargo.toml, pyproject.toml or package.json",
        )),
        Some(Language::Rust) => {
            check_manifest(root, "Cargo.toml", Some("package"), &mut out);
            if !has("src/lib.rs") && !has("src/main.rs") {
                out.push(finding(
                    "src/lib.rs",
                    None,
                    Severity::Error,
                    "required_file",
                    "no src/lib.rs or src/main.rs",
                ));
            }
            if !out.iter().any(|f| f.severity == Severity::Error) {
                syntax("Cargo.toml", Language::Rust, &mut plan);
            }
        }
        Some(Language::Python) => {
            check_manifest(root, "pyproject.toml", Some("project"), &mut out);
            for p in files
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "py"))
            {
                syntax(&rel(root, p), Language::Python, &mut plan);
            }
        }
        Some(Language::Node) => {
            check_manifest(root, "package.json", None, &mut out);
            for p in files
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "js"))
            {
                syntax(&rel(root, p), Language::Node, &mut plan);
            }
        }
    }
    Ok((language, files.len(), out, plan))
}

/// The agent.
#[derive(Debug, Clone)]
pub struct ValidationAgent {
    artifacts: Artifacts,
    jail: Jail,
}

impl ValidationAgent {
    /// An agent reading projects from `artifacts`, running syntax checks in `jail`.
    pub fn new(artifacts: Artifacts, jail: Jail) -> Self {
        Self { artifacts, jail }
    }
}

impl ValidationAgent {
    /// A finding for each path of artifact `sha` that the name rules
    /// refuse. Unpacking would stop at the first with an error; listing
    /// them first lets the stage fail with findings naming every one.
    async fn refused_names(&self, sha: &str) -> Result<Vec<Finding>, AgentError> {
        let bytes = match self.artifacts.get(sha).await {
            Ok(Some(b)) => b,
            // Unpacking says what is wrong with it, as for every agent.
            Ok(None) | Err(agent_sdk::Error::Artifact(_) | agent_sdk::Error::Protocol(_)) => {
                return Ok(Vec::new());
            }
            Err(e) => {
                return Err(AgentError::retryable(format!(
                    "reading artifact {sha}: {e}"
                )));
            }
        };
        let limits = *self.artifacts.limits();
        let names = tokio::task::spawn_blocking(move || refused_names(&bytes, &limits))
            .await
            .map_err(|e| AgentError::retryable(format!("reading the archive stopped: {e}")))?;
        // An archive that cannot be read is refused by unpacking, with its reason.
        Ok(names
            .unwrap_or_default()
            .into_iter()
            .map(|r| name_finding(&r.path, &r.why))
            .collect())
    }
}

impl Agent for ValidationAgent {
    type Input = Checked<TaskInput<ArtifactRequest, Unread>>;
    type Output = Report;

    async fn handle(&self, _ctx: &TaskContext, input: Self::Input) -> Result<Report, AgentError> {
        let sha = artifact_of(&input.into_result("bad input")?)?;
        let (language, files, findings, limits) = match self.refused_names(&sha).await? {
            refused if !refused.is_empty() => (None, 0, refused, None),
            _ => {
                let (_dir, root) = unpack_private(&self.artifacts, &sha).await?;
                // Dropping this future (timeout, lost lease) kills a running check.
                check_tree(&root, &self.jail)
                    .await
                    .map_err(|e| AgentError::retryable(format!("reading the project: {e}")))?
            }
        };
        let report = Report {
            artifact: sha,
            language,
            files,
            findings,
            limits,
        };
        let errors: Vec<&Finding> = report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        if let Some(first) = errors.first() {
            let msg = format!(
                "{} error(s); first: {}{}: {}",
                errors.len(),
                first.file,
                first.line.map(|l| format!(":{l}")).unwrap_or_default(),
                first.message.lines().next().unwrap_or("")
            );
            return Err(AgentError::permanent(msg)
                .with_details(json!({ "findings": report.findings, "limits": report.limits })));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::AgentErrorKind;

    /// The artifact the agent would check for `input`.
    fn artifact(input: Value) -> Result<String, AgentError> {
        let input: <ValidationAgent as Agent>::Input = serde_json::from_value(input).unwrap();
        artifact_of(&input.into_result("bad input")?)
    }

    #[test]
    fn the_artifact_comes_from_the_input_or_the_stage_depended_on() {
        let sha = "c".repeat(64);
        assert_eq!(
            artifact(json!({ "artifact": sha, "note": 1 })).unwrap(),
            sha
        );
        assert_eq!(
            artifact(json!({ "artifact": { "sha256": sha, "files": 3 } })).unwrap(),
            sha
        );
        let staged = json!({ "workflow_id": "w", "stage": "validation", "input": { "name": "x" },
                             "deps": { "scaffold": { "artifact": { "sha256": sha }, "files": [] } } });
        assert_eq!(artifact(staged).unwrap(), sha);
        // A compensation's input is a stage input with more fields.
        let undo = json!({ "workflow_id": "w", "stage": "validation", "input": null,
                           "deps": { "scaffold": { "artifact": sha } }, "output": {}, "action": "undo" });
        assert_eq!(artifact(undo).unwrap(), sha);
        for refused in [
            json!({ "nothing": 1 }),
            json!(true),
            json!({ "workflow_id": "w", "stage": "validation", "input": {}, "deps": {} }),
            json!({ "workflow_id": "w", "stage": "validation", "input": {}, "deps": [] }),
        ] {
            let e = artifact(refused.clone()).unwrap_err();
            assert_eq!(e.kind(), AgentErrorKind::InvalidInput, "{refused}");
        }
    }
}
