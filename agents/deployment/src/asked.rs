//! What a deployment task asks for, read from trusted fields only.
//!
//! A workflow's input is whatever its submitter wrote; the outputs of the
//! stages depended on, the output of a stage being undone and the fields
//! of the definition's `compensate.input` are written by agents and by the
//! definition's author. So, for a workflow stage:
//!
//! - the **action** comes from the definition's fields only (`"action":
//!   "rollback"` of a compensation), else `deploy` — never from the
//!   workflow input;
//! - the **commit** labelling the release comes from the outputs of the
//!   stages depended on (the integration's), never from the workflow input
//!   nor the stage's own fields;
//! - the **app** is the project: the definition's `app`, else, undoing,
//!   the app of the deployment undone, else the `project` of the stage
//!   depended on (the integration's), else (deploying) the artifact's
//!   manifest name. An app, project or name in the workflow input is only
//!   compared with it: one that differs is **refused** as invalid input,
//!   not ignored — a submitter asking for another app learns at once that
//!   it will not happen, and nothing is deployed under a name they did not
//!   expect.
//!
//! A direct task (`POST /tasks/deployment`, an operator's tool) says it
//! all itself; its app, when deploying, must still be the artifact's
//! manifest name. Every label is checked ([`release_id`]), every app name
//! passes the name rules.

use agent_sdk::AgentError;
use agent_sdk::schemas::TaskInput;
use agent_toolkit::{
    ArtifactField, Language, Loose, NamesArtifact, check_project_name, dep_outputs, extra_as, loose,
};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// What a deployment task says, sent directly; and how its fields are read
/// from each place of a stage input (see [`asked`]). A field of another
/// type reads as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Request {
    /// The artifact to deploy (direct inputs; see [`agent_toolkit::artifact_of`]).
    #[serde(default, deserialize_with = "loose")]
    pub artifact: Option<ArtifactField>,
    /// `deploy` (the default) or `rollback`.
    #[serde(default, deserialize_with = "loose")]
    pub action: Option<String>,
    /// The app.
    #[serde(default, deserialize_with = "loose")]
    pub app: Option<String>,
    /// The app, when `app` is not given.
    #[serde(default, deserialize_with = "loose")]
    pub project: Option<String>,
    /// The app, when neither `app` nor `project` is given.
    #[serde(default, deserialize_with = "loose")]
    pub name: Option<String>,
    /// The commit labelling the release (the integration's output has it).
    #[serde(default, deserialize_with = "loose")]
    pub commit: Option<String>,
}

impl Request {
    fn app(&self) -> Option<&str> {
        self.app
            .as_deref()
            .or(self.project.as_deref())
            .or(self.name.as_deref())
    }
}

impl NamesArtifact for Request {
    fn artifact(&self) -> Option<&ArtifactField> {
        self.artifact.as_ref()
    }
}

/// A deployment task's input.
pub type Input = TaskInput<Request, Loose<Request>>;

/// What a task asks for, its artifact aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The action, `deploy` when none is given.
    pub action: String,
    /// The app from trusted fields, unchecked; `None` when deploying: the
    /// artifact's manifest names it.
    pub app: Option<String>,
    /// The app the untrusted part names (the workflow input's; a direct
    /// deployment's own): it must be the app deployed.
    pub requested_app: Option<String>,
    /// The commit to label the release with, unchecked.
    pub commit: Option<String>,
}

/// What `input` asks for (see the module docs for where each field comes from).
pub fn asked(input: &Input) -> Asked {
    let owned = |s: Option<&str>| s.map(str::to_owned);
    match input {
        TaskInput::Direct(req) => {
            let action = req.action.clone().unwrap_or_else(|| "deploy".into());
            let deploying = action == "deploy";
            Asked {
                app: owned(req.app()).filter(|_| !deploying),
                requested_app: owned(req.app()).filter(|_| deploying),
                commit: req.commit.clone(),
                action,
            }
        }
        TaskInput::Stage(s) => {
            let definition = extra_as::<Request, _>(s).unwrap_or_default();
            let undone = s
                .output
                .as_ref()
                .and_then(|o| Request::deserialize(o).ok())
                .unwrap_or_default();
            let deps: Vec<Request> = dep_outputs::<Request, _>(s).collect();
            Asked {
                action: definition.action.clone().unwrap_or_else(|| "deploy".into()),
                app: owned(definition.app.as_deref())
                    .or_else(|| owned(undone.app.as_deref()))
                    .or_else(|| deps.iter().find_map(|d| owned(d.project.as_deref()))),
                requested_app: owned(s.input.0.app()),
                commit: deps.iter().find_map(|d| d.commit.clone()),
            }
        }
    }
}

/// The app to deploy to: `trusted` when given, else the manifest's name
/// of the tree at `tree`; refused when `requested` names another, or the
/// name breaks the name rules.
pub fn app_to_deploy(
    trusted: Option<&str>,
    requested: Option<&str>,
    tree: &Path,
) -> Result<String, AgentError> {
    let app = match trusted {
        Some(a) => a.to_owned(),
        None => manifest_name(tree).ok_or_else(|| {
            AgentError::invalid_input(
                "no app: the artifact's manifest (package.json, Cargo.toml, pyproject.toml) names no project",
            )
        })?,
    };
    check_project_name("app", &app)?;
    if let Some(r) = requested
        && r != app
    {
        return Err(AgentError::invalid_input(format!(
            "app {:?} differs from the project {app:?}: a project deploys only to its own app",
            r.chars().take(70).collect::<String>()
        )));
    }
    Ok(app)
}

/// The project name the manifest of the tree at `root` gives.
pub fn manifest_name(root: &Path) -> Option<String> {
    let (file, section) = match Language::detect(root)? {
        Language::Node => ("package.json", None),
        Language::Rust => ("Cargo.toml", Some("package")),
        Language::Python => ("pyproject.toml", Some("project")),
    };
    let text = std::fs::read_to_string(root.join(file)).ok()?;
    let v: Value = match section {
        None => serde_json::from_str(&text).ok()?,
        Some(s) => serde_json::to_value(text.parse::<toml::Table>().ok()?.get(s)?).ok()?,
    };
    v.get("name")?.as_str().map(str::to_owned)
}

/// Length of a release id taken from a label.
pub const RELEASE_ID_LEN: usize = 12;

/// The release id for `label`: a commit (7–64 lowercase hex digits, a git
/// object id, abbreviated or whole) or the artifact's SHA-256; its first
/// [`RELEASE_ID_LEN`] characters. Anything else, an empty label included,
/// is refused as invalid input.
pub fn release_id(label: &str) -> Result<String, AgentError> {
    let ok = (7..=64).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(AgentError::invalid_input(format!(
            "invalid release label {:?}: 7-64 of 0-9 and a-f (a git commit id)",
            label.chars().take(70).collect::<String>()
        )));
    }
    Ok(label.chars().take(RELEASE_ID_LEN).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::AgentErrorKind;
    use serde_json::json;

    fn read(v: Value) -> Input {
        serde_json::from_value::<agent_toolkit::Checked<Input>>(v)
            .unwrap()
            .into_result("bad input")
            .unwrap()
    }

    fn asked_of(v: Value) -> Asked {
        asked(&read(v))
    }

    #[test]
    fn a_direct_input_says_it_all_and_its_app_is_checked_against_the_manifest() {
        let a = asked_of(json!({ "artifact": "f".repeat(64), "app": "shop", "commit": "abc1234" }));
        assert_eq!(
            a,
            Asked {
                action: "deploy".into(),
                app: None,
                requested_app: Some("shop".into()),
                commit: Some("abc1234".into()),
            }
        );
        let a = asked_of(json!({ "action": "rollback", "project": "shop", "commit": 7 }));
        assert_eq!(
            (a.action.as_str(), a.app.as_deref(), a.commit),
            ("rollback", Some("shop"), None)
        );
        assert_eq!(asked_of(json!({ "action": "explode" })).action, "explode");
    }

    #[test]
    fn a_stage_takes_commit_and_app_from_the_integration_never_the_workflow_input() {
        let sha = "f".repeat(64);
        let staged = json!({ "workflow_id": "w1", "stage": "deployment",
            "input": { "name": "shop", "commit": "0000000", "action": "rollback", "app": "victim" },
            "deps": { "integration": { "artifact": { "sha256": sha }, "commit": "aaaaaaaaaaaaaaaa1111",
                                       "project": "shop", "branch": "wf/w1" } } });
        assert_eq!(
            asked_of(staged),
            Asked {
                action: "deploy".into(),
                app: Some("shop".into()),
                requested_app: Some("victim".into()),
                commit: Some("aaaaaaaaaaaaaaaa1111".into()),
            }
        );
        // Without an integration: no commit, the manifest names the app.
        let a = asked_of(json!({ "workflow_id": "w1", "stage": "deployment",
            "input": { "commit": "1234567" }, "deps": { "e2e": { "artifact": sha } } }));
        assert_eq!((a.app, a.commit), (None, None));
    }

    #[test]
    fn a_compensation_rolls_back_the_app_it_deployed() {
        // As the sdlc's compensation sends it.
        let undo = json!({ "workflow_id": "w7", "stage": "deployment", "action": "rollback",
            "input": { "name": "shop" }, "deps": { "integration": { "project": "shop" } },
            "output": { "action": "deploy", "app": "shop-web" } });
        let a = asked_of(undo);
        assert_eq!(
            (a.action.as_str(), a.app.as_deref()),
            ("rollback", Some("shop-web"))
        );
        // The definition's own fields come first.
        let undo = json!({ "workflow_id": "w7", "stage": "deployment", "action": "rollback",
            "app": "shop-2", "input": { "name": "shop" }, "deps": {}, "output": { "app": "x" } });
        assert_eq!(asked_of(undo).app.as_deref(), Some("shop-2"));
        // The workflow input names no app to roll back.
        let undo = json!({ "workflow_id": "w7", "stage": "deployment", "action": "rollback",
            "input": { "app": "victim" }, "deps": {}, "output": {} });
        assert_eq!(asked_of(undo).app, None);
    }

    #[test]
    fn labels_are_commit_ids_and_never_give_an_empty_release_id() {
        assert_eq!(release_id("aaaaaaaaaaaaaaaa1111").unwrap(), "aaaaaaaaaaaa");
        assert_eq!(release_id("abc1234").unwrap(), "abc1234");
        for bad in [
            "",
            "abc",
            "../../etc",
            "ABCDEF1234",
            "v1.2.3-rc",
            "zzzzzzzz",
            &"a".repeat(65),
        ] {
            let e = release_id(bad).unwrap_err();
            assert_eq!(e.kind(), AgentErrorKind::InvalidInput, "{bad}");
            assert!(e.message().contains("invalid release label"), "{e}");
        }
    }

    #[test]
    fn the_app_is_the_project() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pyproject.toml"),
            "[project]\nname = \"shop\"\n",
        )
        .unwrap();
        assert_eq!(manifest_name(dir.path()).as_deref(), Some("shop"));
        assert_eq!(app_to_deploy(None, None, dir.path()).unwrap(), "shop");
        assert_eq!(
            app_to_deploy(None, Some("shop"), dir.path()).unwrap(),
            "shop"
        );
        assert_eq!(app_to_deploy(Some("web"), None, dir.path()).unwrap(), "web");
        let e = app_to_deploy(None, Some("victim"), dir.path()).unwrap_err();
        assert!(
            e.message()
                .contains("\"victim\" differs from the project \"shop\""),
            "{e}"
        );
        let e = app_to_deploy(Some("../etc"), None, dir.path()).unwrap_err();
        assert!(e.message().contains("invalid app name"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = app_to_deploy(None, None, empty.path()).unwrap_err();
        assert!(e.message().starts_with("no app"), "{e}");
    }
}
