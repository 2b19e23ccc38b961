//! `scaffold-agent`: turns a short request into a generated project and
//! publishes it as an artifact (see `agent_sdk::artifacts`), so the next
//! stages need no shared filesystem.
//!
//! Input (directly, or as a workflow's input when run as a stage; see
//! [`Input`]):
//!
//! ```json
//! {"name": "hello-svc", "template": "node-service", "description": "Says hello",
//!  "extras": {"docs/NOTES.md": "free text"}}
//! ```
//!
//! Output: the artifact reference, the template and the file list. The same
//! input always gives the same artifact digest. An unknown template, an
//! invalid name or an unsafe extra path is refused as invalid input, with a
//! message naming the problem.
//!
//! An extra file's path must be relative, inside the project, at most 200
//! bytes, without `\`, and pass the name rules of
//! `agent_sdk::schemas::tree_path` (the artifact store's): no component
//! starting with `-`, no `.git` (file or directory, any depth),
//! `.gitmodules`, `.gitattributes`, `.gitconfig` or git hook, no control
//! character. Later stages hand these names to `git` and to toolchains.

pub mod templates;

use agent_sdk::schemas::TaskInput;
use agent_sdk::{Agent, AgentError, ArtifactRef, Artifacts, TaskContext};
use agent_toolkit::Checked;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path};

/// Longest project name.
pub const MAX_NAME_LEN: usize = 40;
/// Most extra files.
pub const MAX_EXTRAS: usize = 50;
/// Largest total size of the extra files, in bytes.
pub const MAX_EXTRAS_BYTES: usize = 256 * 1024;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Project name: 1–40 of `a-z 0-9 -`, starting with a letter.
    pub name: String,
    /// One of [`templates::TEMPLATES`].
    pub template: String,
    /// One line for the README and the manifest.
    #[serde(default)]
    pub description: Option<String>,
    /// Extra files: relative path → contents.
    #[serde(default)]
    pub extras: BTreeMap<String, String>,
}

/// What was generated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// The stored tree.
    pub artifact: ArtifactRef,
    /// The template used.
    pub template: String,
    /// Every file, relative, sorted.
    pub files: Vec<String>,
}

/// The scaffold's fields of a workflow input. A workflow input may carry
/// more than the scaffold reads (other stages' fields): those are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkflowRequest {
    /// See [`Request::name`].
    pub name: String,
    /// See [`Request::template`].
    pub template: String,
    /// See [`Request::description`].
    #[serde(default)]
    pub description: Option<String>,
    /// See [`Request::extras`].
    #[serde(default)]
    pub extras: BTreeMap<String, String>,
}

impl From<WorkflowRequest> for Request {
    fn from(w: WorkflowRequest) -> Self {
        Self {
            name: w.name,
            template: w.template,
            description: w.description,
            extras: w.extras,
        }
    }
}

/// A scaffold task's input: a [`Request`] sent directly (no unknown field
/// allowed), or a workflow stage's input whose workflow input holds a
/// [`WorkflowRequest`]; one that is neither is refused as invalid input by
/// [`request`] (see [`Checked`]).
pub type Input = Checked<TaskInput<Request, WorkflowRequest>>;

/// The request to generate, or an invalid-input error saying why the input
/// holds none.
pub fn request(input: Input) -> Result<Request, AgentError> {
    Ok(match input.into_result("bad request")? {
        TaskInput::Direct(req) => req,
        TaskInput::Stage(stage) => stage.input.into(),
    })
}

fn check_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(AgentError::invalid_input(format!(
            "invalid project name {:?}: 1-{MAX_NAME_LEN} of a-z, 0-9 and single '-', starting with a letter",
            name.chars().take(60).collect::<String>()
        )))
    }
}

fn check_extra_path(path: &str) -> Result<(), AgentError> {
    let p = Path::new(path);
    let normal = !path.is_empty()
        && path.len() <= 200
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !path.contains('\\');
    if !normal {
        return Err(AgentError::invalid_input(format!(
            "extra file path {path:?} must be relative, inside the project, without '..'"
        )));
    }
    // The artifact store refuses these names too; refusing them here says
    // so at once, naming the file, instead of failing at packing.
    agent_sdk::schemas::check_tree_path(p)
        .map_err(|e| AgentError::invalid_input(format!("extra file refused: {e}")))
}

/// Writes the project of `req` under `dir`; returns its files, sorted.
pub fn generate(req: &Request, dir: &Path) -> Result<Vec<String>, AgentError> {
    check_name(&req.name)?;
    let description = req
        .description
        .as_deref()
        .unwrap_or("A project generated by scaffold-agent.");
    if description.len() > 500 || description.contains('\n') {
        return Err(AgentError::invalid_input(
            "description must be one line of at most 500 bytes",
        ));
    }
    let project = templates::Project {
        name: &req.name,
        description,
    };
    let mut files = templates::render(&req.template, &project).ok_or_else(|| {
        AgentError::invalid_input(format!(
            "unknown template {:?}: one of {}",
            req.template.chars().take(60).collect::<String>(),
            templates::TEMPLATES.join(", ")
        ))
    })?;
    if req.extras.len() > MAX_EXTRAS {
        return Err(AgentError::invalid_input(format!(
            "more than {MAX_EXTRAS} extra files"
        )));
    }
    if req.extras.values().map(String::len).sum::<usize>() > MAX_EXTRAS_BYTES {
        return Err(AgentError::invalid_input(format!(
            "extra files over {MAX_EXTRAS_BYTES} bytes"
        )));
    }
    for (path, body) in &req.extras {
        check_extra_path(path)?;
        if files.iter().any(|f| f.path == *path) {
            return Err(AgentError::invalid_input(format!(
                "extra file {path:?} would replace a file of the template"
            )));
        }
        files.push(templates::File {
            path: path.clone(),
            body: body.clone(),
            executable: false,
        });
    }
    let io = |e: std::io::Error| AgentError::retryable(format!("writing the project: {e}"));
    for f in &files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, &f.body).map_err(io)?;
        #[cfg(unix)]
        if f.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        }
    }
    let mut names: Vec<String> = files.into_iter().map(|f| f.path).collect();
    names.sort();
    Ok(names)
}

/// The agent: generates into a private temporary directory and stores the
/// tree as an artifact.
#[derive(Debug, Clone)]
pub struct ScaffoldAgent {
    artifacts: Artifacts,
}

impl ScaffoldAgent {
    /// An agent storing its projects in `artifacts`.
    pub fn new(artifacts: Artifacts) -> Self {
        Self { artifacts }
    }
}

impl Agent for ScaffoldAgent {
    type Input = Input;
    type Output = Output;

    async fn handle(&self, _ctx: &TaskContext, input: Input) -> Result<Output, AgentError> {
        let req = request(input)?;
        let dir = tempfile::tempdir()
            .map_err(|e| AgentError::retryable(format!("no temporary directory: {e}")))?;
        let files = generate(&req, dir.path())?;
        let artifact = self
            .artifacts
            .put_dir(dir.path())
            .await
            .map_err(|e| match e {
                agent_sdk::Error::Artifact(m) => AgentError::invalid_input(m),
                other => AgentError::retryable(format!("storing the artifact: {other}")),
            })?;
        Ok(Output {
            artifact,
            template: req.template,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::AgentErrorKind;
    use agent_sdk::schemas::{DecodeLimits, Encoding};
    use serde_json::{Value, json};

    fn request_of(v: Value) -> Result<Request, AgentError> {
        request(serde_json::from_value::<Input>(v).expect("an Input always decodes"))
    }

    fn refused(v: Value, needle: &str) {
        let e = request_of(v.clone()).unwrap_err();
        assert_eq!(e.kind(), AgentErrorKind::InvalidInput, "{v}");
        assert!(e.message().contains(needle), "{needle:?} not in {e}");
    }

    fn wanted() -> Request {
        Request {
            name: "hello-svc".into(),
            template: "node-service".into(),
            description: None,
            extras: BTreeMap::from([("a.md".into(), "x".into())]),
        }
    }

    #[test]
    fn a_direct_input_is_the_request_and_nothing_else() {
        let direct =
            json!({ "name": "hello-svc", "template": "node-service", "extras": { "a.md": "x" } });
        assert_eq!(request_of(direct.clone()).unwrap(), wanted());
        // As the runtime sends it.
        let bytes = Encoding::MsgPack.encode(&direct).unwrap();
        let input: Input = Encoding::MsgPack
            .decode(&bytes, DecodeLimits::default())
            .unwrap();
        assert_eq!(request(input).unwrap(), wanted());
        refused(
            json!({ "name": "hello-svc", "template": "node-service", "faults": {} }),
            "bad request: unknown field `faults`",
        );
        refused(json!({ "name": "ok" }), "missing field `template`");
        refused(json!("hello-svc"), "bad request");
    }

    #[test]
    fn a_stage_reads_its_fields_of_the_workflow_input() {
        let staged = json!({ "workflow_id": "w1", "stage": "scaffold", "deps": {},
            "input": { "name": "hello-svc", "template": "node-service", "extras": { "a.md": "x" },
                       "faults": {}, "app": "shop" } });
        assert_eq!(request_of(staged).unwrap(), wanted());
        refused(
            json!({ "workflow_id": "w1", "stage": "scaffold", "deps": {}, "input": { "name": "x" } }),
            "stage input: missing field `template`",
        );
        refused(
            json!({ "workflow_id": "w1", "stage": "scaffold", "deps": {}, "input": null }),
            "bad request: stage input",
        );
    }

    #[test]
    fn a_compensation_shaped_input_is_a_stage_input_too() {
        let undo = json!({ "workflow_id": "w1", "stage": "scaffold", "deps": {},
            "input": { "name": "hello-svc", "template": "node-service", "extras": { "a.md": "x" } },
            "output": { "files": [] }, "action": "rollback" });
        assert_eq!(request_of(undo).unwrap(), wanted());
    }
}
