//! What the reference agents share.
//!
//! - [`input`]: a task's input as types — [`Checked`] (refuse what does not
//!   fit as invalid input), [`Loose`], the outputs of the stages depended on
//!   ([`dep_outputs`]), how an artifact is named ([`ArtifactField`]).
//! - [`artifact_of`]: the artifact a task is about — given directly, or
//!   output by the stage it depends on.
//! - [`unpack_private`]: that artifact, unpacked where no one else looks.
//! - [`Language`]: a project's language, from its manifest.
//! - [`jail`]: every untrusted program (a project's tests, smoke check,
//!   build) runs in the [`Jail`]: bubblewrap namespaces, its own uid,
//!   a read-only root, limits, and the whole process tree killed at the end.

pub mod input;
pub mod jail;
#[cfg(feature = "test-util")]
pub mod testing;

pub use jail::{Enforcement, Jail, JailArgs, JailCommand, JailError, RunOutput};

pub use input::{
    ArtifactField, ArtifactRequest, Checked, Loose, NamesArtifact, Unread, WithArtifact,
    dep_outputs, extra_as, loose,
};

use agent_sdk::schemas::TaskInput;
use agent_sdk::{AgentError, Artifacts};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The artifact digest a task is about: the one its direct input names
/// (`{"artifact": "<sha256>"}` or `{"artifact": {"sha256": ...}}`), or, for
/// a workflow stage, the one its own fields name (a compensation's), else
/// the artifact (either form) of the first stage, by name, it depends on
/// that output one.
pub fn artifact_of<D: NamesArtifact, W>(task: &TaskInput<D, W>) -> Result<String, AgentError> {
    let found = match task {
        TaskInput::Direct(d) => d.artifact().cloned(),
        TaskInput::Stage(s) => extra_as::<ArtifactRequest, _>(s)
            .and_then(|own| own.artifact)
            .or_else(|| dep_outputs::<WithArtifact, _>(s).next().map(|o| o.artifact)),
    };
    found.map(ArtifactField::into_sha256).ok_or_else(|| {
        AgentError::invalid_input(
            "no artifact: give {\"artifact\": \"<sha256>\"} or depend on a stage that outputs one",
        )
    })
}

/// Fetches artifact `sha256` and unpacks it into a private temporary
/// directory; the directory (removed when dropped) and the project root in it.
/// A missing or refused artifact is a permanent failure, a Redis problem a
/// retryable one.
pub async fn unpack_private(
    artifacts: &Artifacts,
    sha256: &str,
) -> Result<(tempfile::TempDir, std::path::PathBuf), AgentError> {
    let dir = tempfile::tempdir()
        .map_err(|e| AgentError::retryable(format!("no temporary directory: {e}")))?;
    let root = dir.path().join("project");
    match artifacts.unpack(sha256, &root).await {
        Ok(Some(_)) => Ok((dir, root)),
        Ok(None) => Err(AgentError::permanent(format!(
            "artifact {sha256} not found (never stored, or expired)"
        ))),
        Err(agent_sdk::Error::Artifact(m)) => Err(AgentError::permanent(format!(
            "artifact {sha256} refused: {m}"
        ))),
        Err(agent_sdk::Error::Protocol(e)) => Err(AgentError::invalid_input(format!(
            "bad artifact reference: {e}"
        ))),
        Err(e) => Err(AgentError::retryable(format!(
            "reading artifact {sha256}: {e}"
        ))),
    }
}

/// Checks a project (or app) name: 1–64 of `a-z 0-9 -`, starting with a
/// letter. It names a directory the agent's configuration chose the parent
/// of, so nothing else may pass.
pub fn check_project_name(what: &str, name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AgentError::invalid_input(format!(
            "invalid {what} name {:?}: 1-64 of a-z, 0-9 and '-', starting with a letter",
            name.chars().take(70).collect::<String>()
        )))
    }
}

/// A project's language, told by its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// `Cargo.toml`.
    Rust,
    /// `pyproject.toml`.
    Python,
    /// `package.json`.
    Node,
}

impl Language {
    /// The language of the project at `root`, if it has a manifest.
    pub fn detect(root: &Path) -> Option<Self> {
        [
            ("Cargo.toml", Self::Rust),
            ("pyproject.toml", Self::Python),
            ("package.json", Self::Node),
        ]
        .into_iter()
        .find_map(|(m, l)| root.join(m).is_file().then_some(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn artifact_in(input: Value) -> Result<String, AgentError> {
        let task: Checked<TaskInput<ArtifactRequest, Unread>> =
            serde_json::from_value(input).unwrap();
        artifact_of(&task.into_result("bad input")?)
    }

    #[test]
    fn finds_the_artifact_in_every_form() {
        let sha = "a".repeat(64);
        for input in [
            json!({ "artifact": sha }),
            json!({ "artifact": { "sha256": sha } }),
            json!({ "workflow_id": "w", "stage": "e2e", "input": {},
                    "deps": { "scaffold": { "artifact": { "sha256": sha, "files": 3 } } } }),
            json!({ "workflow_id": "w", "stage": "e2e", "input": {},
                    "deps": { "validation": { "artifact": sha, "findings": [] } } }),
        ] {
            assert_eq!(artifact_in(input.clone()).unwrap(), sha, "{input}");
        }
        assert!(
            artifact_in(json!({ "workflow_id": "w", "stage": "e2e", "input": {},
                                "deps": { "x": { "y": 1 } } }))
            .is_err()
        );
    }

    #[test]
    fn a_stage_takes_its_own_artifact_then_the_first_dependency_with_one() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        // Stages in name order; one without an artifact is passed over.
        let staged = json!({ "workflow_id": "w", "stage": "d", "input": { "artifact": "no" },
                             "deps": { "a": { "artifact": 7 }, "b": { "artifact": b }, "c": { "artifact": a } } });
        assert_eq!(artifact_in(staged).unwrap(), b);
        // A compensation's own fields come first.
        let undo = json!({ "workflow_id": "w", "stage": "d", "input": {}, "output": {},
                           "artifact": { "sha256": a }, "deps": { "b": { "artifact": b } } });
        assert_eq!(artifact_in(undo).unwrap(), a);
        for none in [
            json!({ "nothing": 1 }),
            json!({ "artifact": 5 }),
            json!({ "workflow_id": "w", "stage": "d", "input": { "artifact": a } }),
        ] {
            let e = artifact_in(none.clone()).unwrap_err();
            assert_eq!(e.kind(), agent_sdk::AgentErrorKind::InvalidInput, "{none}");
            assert!(e.message().starts_with("no artifact"), "{e}");
        }
        let e = artifact_in(json!("text")).unwrap_err();
        assert_eq!(e.kind(), agent_sdk::AgentErrorKind::InvalidInput);
    }
}
