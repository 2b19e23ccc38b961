//! `integration-agent`: commits a project artifact into the git repository
//! of its project — `<repos dir>/<project name>`, created when missing — on
//! a branch named after the workflow, then merges that branch into the main
//! branch. A merge conflict is a permanent failure naming the files.
//!
//! Only the agent's configuration chooses a directory: the task gives an
//! artifact and, at most, a project name that must pass the name rules.
//!
//! Input ([`Request`]): `{"artifact": …, "project": "shop"}` (or `"name"`),
//! or as a workflow stage the artifact of the stage it depends on (see
//! [`agent_toolkit::artifact_of`]) and the project named by the stage
//! input's own fields or the workflow input; else the manifest's name.
//!
//! Output: the merge commit on the main branch, the branch, and the
//! artifact of the committed tree, so the next stage needs no access to the
//! repository. Repositories of one repos directory are written by one
//! process at a time (an in-process lock per repository); run one
//! integration agent per repos directory.
//!
//! Git runs without ambient configuration ([`git`]): a private empty home,
//! no global or system config, attributes from the empty tree (so no
//! `.gitattributes` selects a filter), hooks, fsmonitor, submodules and
//! every transport off. The artifact's names passed the artifact store's
//! rules (no `.git`, `.gitattributes`, `.gitmodules`, `.gitconfig`, hook,
//! or name starting with `-`).

pub mod git;

use agent_sdk::schemas::TaskInput;
use agent_sdk::{Agent, AgentError, Artifacts, TaskContext};
use agent_toolkit::{
    ArtifactField, Checked, Loose, NamesArtifact, artifact_of, check_project_name, extra_as, loose,
    unpack_private,
};
use git::{Git, GitError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What was integrated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrated {
    /// Project (and repository directory) name.
    pub project: String,
    /// The branch the artifact was committed on.
    pub branch: String,
    /// The main branch's commit after the merge.
    pub commit: String,
    /// The committed tree of the main branch, as an artifact.
    pub artifact: agent_sdk::ArtifactRef,
}

/// What an integration task says: sent directly, or read from a stage
/// input's own fields and from the workflow input. A field of another type
/// reads as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Request {
    /// The artifact to commit (direct inputs; see [`artifact_of`]).
    #[serde(default, deserialize_with = "loose")]
    pub artifact: Option<ArtifactField>,
    /// The project.
    #[serde(default, deserialize_with = "loose")]
    pub project: Option<String>,
    /// The project, when `project` is not given.
    #[serde(default, deserialize_with = "loose")]
    pub name: Option<String>,
}

impl Request {
    fn project(&self) -> Option<&str> {
        self.project.as_deref().or(self.name.as_deref())
    }
}

impl NamesArtifact for Request {
    fn artifact(&self) -> Option<&ArtifactField> {
        self.artifact.as_ref()
    }
}

/// An integration task's input.
pub type Input = TaskInput<Request, Loose<Request>>;

/// The project a task names: the direct input's; for a stage, its own
/// fields' (a compensation's), else the workflow input's.
pub fn project_named(input: &Input) -> Option<String> {
    match input {
        TaskInput::Direct(req) => req.project().map(str::to_owned),
        TaskInput::Stage(s) => extra_as::<Request, _>(s)
            .and_then(|own| own.project().map(str::to_owned))
            .or_else(|| s.input.project().map(str::to_owned)),
    }
}

/// A project name: see [`check_project_name`].
pub fn check_project(name: &str) -> Result<(), AgentError> {
    check_project_name("project", name)
}

/// The branch for a task: `wf/<workflow>` in a workflow, `task/<task id>` otherwise.
pub fn branch_for(ctx_workflow: Option<&str>, task_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(80)
            .collect()
    };
    match ctx_workflow {
        Some(wf) => format!("wf/{}", clean(wf)),
        None => format!("task/{}", clean(task_id)),
    }
}

/// The project name: the one the task names (see [`project_named`]), else
/// the one the artifact's manifest gives.
fn project_of(input: &Input, tree: &Path) -> Result<String, AgentError> {
    let name = match project_named(input) {
        Some(n) => n,
        None => manifest_name(tree).ok_or_else(|| {
            AgentError::invalid_input("no project name: give \"project\" or a manifest with a name")
        })?,
    };
    check_project(&name)?;
    Ok(name)
}

fn manifest_name(tree: &Path) -> Option<String> {
    let text = |f: &str| std::fs::read_to_string(tree.join(f)).ok();
    if let Some(t) = text("package.json") {
        return serde_json::from_str::<Value>(&t).ok()?["name"]
            .as_str()
            .map(str::to_owned);
    }
    for (file, key) in [("Cargo.toml", "[package]"), ("pyproject.toml", "[project]")] {
        if let Some(t) = text(file) {
            let mut in_section = false;
            for line in t.lines() {
                let line = line.trim();
                if line.starts_with('[') {
                    in_section = line == key;
                } else if in_section
                    && let Some(v) = line.strip_prefix("name")
                    && let Some(v) = v.trim_start().strip_prefix('=')
                {
                    return Some(v.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    None
}

/// Copies the tree under `from` into `to` (files and directories only).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type()?;
        if t.is_dir() {
            if e.file_name() == ".git" {
                continue;
            }
            std::fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else if t.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Commits `tree` to `branch` of the repository at `repo` and merges it into
/// `main`; returns the main branch's commit. Blocking (git).
pub fn integrate(
    repo: &Path,
    tree: &Path,
    branch: &str,
    main: &str,
    message: &str,
) -> Result<String, AgentError> {
    let fail = |e: GitError| AgentError::retryable(e.0);
    // Every git call of this function goes through `git` (see [`git`]).
    let git = Git::new(repo)
        .map_err(|e| AgentError::retryable(format!("no private home for git: {e}")))?;
    if !repo.join(".git").is_dir() {
        std::fs::create_dir_all(repo)
            .map_err(|e| AgentError::retryable(format!("creating {}: {e}", repo.display())))?;
        git.run(&["init", "-q", "-b", main]).map_err(fail)?;
        git.run(&["commit", "-q", "--allow-empty", "-m", "Initial commit"])
            .map_err(fail)?;
    }
    // Start clean on main (a crash may have left anything).
    let _ = git.run(&["merge", "--abort"]);
    git.run(&["checkout", "-q", "-f", main, "--"])
        .map_err(fail)?;
    git.run(&["clean", "-fdq"]).map_err(fail)?;
    // The workflow's branch: kept if it exists (a stage run again commits
    // on top of it), else started from main.
    if git
        .run(&[
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}"),
        ])
        .is_ok()
    {
        git.run(&["checkout", "-q", branch, "--"]).map_err(fail)?;
    } else {
        git.run(&["checkout", "-q", "-b", branch]).map_err(fail)?;
    }
    // The branch's tree becomes exactly the artifact's.
    git.run(&["rm", "-rqf", "--ignore-unmatch", "."])
        .map_err(fail)?;
    git.run(&["clean", "-fdq"]).map_err(fail)?;
    copy_tree(tree, repo).map_err(|e| AgentError::retryable(format!("copying the tree: {e}")))?;
    git.run(&["add", "-A"]).map_err(fail)?;
    if git.run(&["diff", "--cached", "--quiet"]).is_err() {
        git.run(&["commit", "-q", "-m", message]).map_err(fail)?;
    }
    git.run(&["checkout", "-q", main, "--"]).map_err(fail)?;
    if let Err(e) = git.run(&[
        "merge",
        "--no-ff",
        "-q",
        "-m",
        &format!("Merge {branch}"),
        branch,
    ]) {
        let files = git
            .run(&["diff", "--name-only", "--diff-filter=U"])
            .unwrap_or_default();
        let _ = git.run(&["merge", "--abort"]);
        if files.is_empty() {
            return Err(fail(e));
        }
        return Err(AgentError::permanent(format!(
            "merging {branch} into {main} conflicts in: {}",
            files.lines().collect::<Vec<_>>().join(", ")
        )));
    }
    git.run(&["rev-parse", "HEAD"]).map_err(fail)
}

/// The agent.
#[derive(Debug, Clone)]
pub struct IntegrationAgent {
    artifacts: Artifacts,
    repos: PathBuf,
    main: String,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl IntegrationAgent {
    /// Repositories live under `repos`; merges go into branch `main`.
    pub fn new(artifacts: Artifacts, repos: PathBuf, main: impl Into<String>) -> Self {
        Self {
            artifacts,
            repos,
            main: main.into(),
            locks: Arc::default(),
        }
    }

    fn lock(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(project.to_owned()).or_default().clone()
    }
}

impl Agent for IntegrationAgent {
    type Input = Checked<Input>;
    type Output = Integrated;

    async fn handle(
        &self,
        ctx: &TaskContext,
        input: Checked<Input>,
    ) -> Result<Integrated, AgentError> {
        let input = input.into_result("bad input")?;
        let sha = artifact_of(&input)?;
        let (_dir, tree) = unpack_private(&self.artifacts, &sha).await?;
        let project = project_of(&input, &tree)?;
        let branch = branch_for(ctx.workflow_id(), ctx.task_id());
        let repo = self.repos.join(&project);
        let lock = self.lock(&project);
        let _held = lock.lock().await;
        let (main, message) = (self.main.clone(), format!("{branch}: artifact {sha}"));
        let (repo2, tree2, branch2) = (repo.clone(), tree.clone(), branch.clone());
        let commit = tokio::task::spawn_blocking(move || {
            integrate(&repo2, &tree2, &branch2, &main, &message)
        })
        .await
        .map_err(|e| AgentError::retryable(format!("integration stopped: {e}")))??;
        // The committed tree, for the next stage.
        let out = tempfile::tempdir()
            .map_err(|e| AgentError::retryable(format!("no temporary directory: {e}")))?;
        copy_tree(&repo, out.path())
            .map_err(|e| AgentError::retryable(format!("reading the repository: {e}")))?;
        let artifact = self
            .artifacts
            .put_dir(out.path())
            .await
            .map_err(|e| match e {
                // The main branch holds what no artifact may (a name the
                // rules refuse, committed before they existed): no retry mends it.
                agent_sdk::Error::Artifact(m) => {
                    AgentError::permanent(format!("the committed tree is refused: {m}"))
                }
                other => AgentError::retryable(format!("storing the committed tree: {other}")),
            })?;
        Ok(Integrated {
            project,
            branch,
            commit,
            artifact,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::AgentErrorKind;
    use serde_json::json;

    fn read(v: Value) -> Result<Input, AgentError> {
        serde_json::from_value::<Checked<Input>>(v)
            .unwrap()
            .into_result("bad input")
    }

    #[test]
    fn a_direct_input_names_the_artifact_and_maybe_the_project() {
        let sha = "e".repeat(64);
        let i = read(json!({ "artifact": sha, "project": "shop", "name": "other" })).unwrap();
        assert_eq!(artifact_of(&i).unwrap(), sha);
        assert_eq!(project_named(&i).as_deref(), Some("shop"));
        let i = read(json!({ "artifact": { "sha256": sha }, "name": "shop" })).unwrap();
        assert_eq!(project_named(&i).as_deref(), Some("shop"));
        // Not a string: as if not given (the manifest's name is used).
        let i = read(json!({ "artifact": sha, "project": 5 })).unwrap();
        assert_eq!(project_named(&i), None);
        let e = read(json!("x")).unwrap_err();
        assert_eq!(e.kind(), AgentErrorKind::InvalidInput);
    }

    #[test]
    fn a_stage_takes_the_project_from_its_own_fields_or_the_workflow_input() {
        let sha = "e".repeat(64);
        let staged = json!({ "workflow_id": "wf-1", "stage": "integration",
                             "input": { "name": "shop", "template": "python-package" },
                             "deps": { "e2e": { "artifact": sha, "passed": 2, "project": "no" } } });
        let i = read(staged).unwrap();
        assert_eq!(artifact_of(&i).unwrap(), sha);
        assert_eq!(project_named(&i).as_deref(), Some("shop"));
        // A compensation's own fields come first.
        let undo = json!({ "workflow_id": "wf-1", "stage": "integration", "input": { "name": "shop" },
                           "deps": { "e2e": { "artifact": sha } }, "output": { "commit": "c" },
                           "project": "shop-undo" });
        assert_eq!(
            project_named(&read(undo).unwrap()).as_deref(),
            Some("shop-undo")
        );
        // No workflow input, or one of another shape: no name from it.
        for input in [json!(null), json!("shop"), json!({ "name": 1 })] {
            let i = read(json!({ "workflow_id": "w", "stage": "s", "input": input,
                                 "deps": { "e2e": { "artifact": sha } } }))
            .unwrap();
            assert_eq!(project_named(&i), None);
            assert_eq!(artifact_of(&i).unwrap(), sha);
        }
    }
}
