//! Reading a task's input as types: the contract types of
//! [`agent_sdk::schemas::stage_input`], plus what the reference agents need
//! around them.
//!
//! - [`Checked`]: an input type whose decoding never fails, so an input that
//!   does not fit is refused by the agent as *invalid input*, naming the
//!   problem, instead of being dead-lettered by the runtime as *malformed*.
//! - [`Loose`] and [`loose`]: a value read leniently — one that does not fit
//!   reads as absent, as a field read with `as_str` did.
//! - [`dep_outputs`], [`extra_as`]: the outputs of the stages a stage
//!   depends on, and a compensation's extra fields, as types.
//! - [`ArtifactField`], [`WithArtifact`], [`ArtifactRequest`]: how tasks and
//!   stage outputs name an artifact.

use agent_sdk::AgentError;
use agent_sdk::schemas::StageInput;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A task input of type `T`, or why the input does not fit `T`.
///
/// The runtime dead-letters an input its agent's `Input` type cannot decode
/// as *malformed* (the entry was garbage); an agent that declares
/// `type Input = Checked<TaskInput<Request, Workflow>>` gets every
/// well-formed entry and refuses one that does not fit as *invalid input*
/// with [`Checked::into_result`].
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T>(Result<T, String>);

impl<T> Checked<T> {
    /// The input, or an invalid-input error `"{what}: {why it does not fit}"`.
    pub fn into_result(self, what: &str) -> Result<T, AgentError> {
        self.0
            .map_err(|why| AgentError::invalid_input(format!("{what}: {why}")))
    }
}

impl<T> From<T> for Checked<T> {
    fn from(input: T) -> Self {
        Self(Ok(input))
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any well-formed value is read; only then typed.
        let v = Value::deserialize(d)?;
        Ok(Self(serde_json::from_value(v).map_err(|e| e.to_string())))
    }
}

/// Reads a `T` leniently: absent, `null` or not a `T` reads as
/// `T::default()`. For a field: `#[serde(default, deserialize_with =
/// "agent_toolkit::loose")]`; an `Option<String>` so read is what
/// `value.get(k).and_then(Value::as_str)` was.
pub fn loose<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let v = Option::<Value>::deserialize(d)?;
    Ok(v.and_then(|v| T::deserialize(v).ok()).unwrap_or_default())
}

/// A `T` read with [`loose`]; as a type parameter, e.g. the workflow input
/// of a stage whose agent reads a few fields of it:
/// `TaskInput<Request, Loose<Request>>`. Absent reads as the default too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loose<T>(pub T);

impl<T> std::ops::Deref for Loose<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: DeserializeOwned + Default> Deserialize<'de> for Loose<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        loose(d).map(Self)
    }
}

/// A workflow input the agent does not read: anything, or nothing.
pub type Unread = Option<IgnoredAny>;

/// The outputs of the stages `stage` depends on that read as `T`, in stage
/// name order; the others are skipped.
pub fn dep_outputs<T: DeserializeOwned, W>(stage: &StageInput<W>) -> impl Iterator<Item = T> + '_ {
    stage
        .deps
        .values()
        .filter_map(|out| T::deserialize(out).ok())
}

/// The fields of a stage input beside its own (a compensation's: the
/// definition's `compensate.input`), as a `T`, if they read as one.
pub fn extra_as<T: DeserializeOwned, W>(stage: &StageInput<W>) -> Option<T> {
    T::deserialize(&stage.extra).ok()
}

/// An artifact as a task or a stage output names it: its digest, or a
/// reference holding it (an [`agent_sdk::ArtifactRef`]; other fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "an artifact: \"<sha256>\" or {\"sha256\": \"<sha256>\"}"
)]
pub enum ArtifactField {
    /// `"<sha256>"`.
    Sha256(String),
    /// `{"sha256": "<sha256>", …}`.
    Ref {
        /// The digest.
        sha256: String,
    },
}

impl ArtifactField {
    /// The digest.
    pub fn sha256(&self) -> &str {
        match self {
            Self::Sha256(s) | Self::Ref { sha256: s } => s,
        }
    }

    /// The digest, owned.
    pub fn into_sha256(self) -> String {
        match self {
            Self::Sha256(s) | Self::Ref { sha256: s } => s,
        }
    }
}

/// A stage output that names an artifact (`{"artifact": …, …}`): what the
/// scaffold, validation, e2e and integration agents output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WithArtifact {
    /// The artifact.
    pub artifact: ArtifactField,
}

/// A direct input that may name the artifact it is about.
pub trait NamesArtifact {
    /// The artifact, when the input names one.
    fn artifact(&self) -> Option<&ArtifactField>;
}

/// The direct input of an agent that needs only an artifact:
/// `{"artifact": …}`; other fields are ignored, and an `artifact` of another
/// shape reads as none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ArtifactRequest {
    /// The artifact.
    #[serde(default, deserialize_with = "loose")]
    pub artifact: Option<ArtifactField>,
}

impl NamesArtifact for ArtifactRequest {
    fn artifact(&self) -> Option<&ArtifactField> {
        self.artifact.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk::AgentErrorKind;
    use agent_sdk::schemas::{DecodeLimits, Encoding, TaskInput};
    use serde_json::json;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        n: u32,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    struct Named {
        #[serde(default, deserialize_with = "loose")]
        name: Option<String>,
    }

    type Input = Checked<TaskInput<Strict, Loose<Named>>>;

    fn read(v: Value) -> Result<TaskInput<Strict, Loose<Named>>, AgentError> {
        serde_json::from_value::<Input>(v)
            .expect("a Checked always decodes")
            .into_result("bad input")
    }

    #[test]
    fn a_direct_input_that_does_not_fit_is_refused_as_invalid_input() {
        assert_eq!(
            read(json!({"n": 1})).unwrap(),
            TaskInput::Direct(Strict { n: 1 })
        );
        for (v, needle) in [
            (json!({"n": 1, "x": 2}), "bad input: unknown field `x`"),
            (json!({}), "missing field `n`"),
            (json!("text"), "invalid type: string"),
        ] {
            let e = read(v).unwrap_err();
            assert_eq!(e.kind(), AgentErrorKind::InvalidInput);
            assert!(e.message().contains(needle), "{needle:?} not in {e}");
        }
        // MessagePack, as the runtime sends it.
        let msgpack = Encoding::MsgPack;
        let bytes = msgpack.encode(&json!({"n": 7})).unwrap();
        let c: Input = msgpack.decode(&bytes, DecodeLimits::default()).unwrap();
        assert_eq!(
            c.into_result("x").unwrap(),
            TaskInput::Direct(Strict { n: 7 })
        );
        let bytes = msgpack.encode(&json!({"n": "seven"})).unwrap();
        let c: Input = msgpack.decode(&bytes, DecodeLimits::default()).unwrap();
        assert!(c.into_result("x").is_err());
    }

    #[test]
    fn a_stage_reads_its_workflow_input_loosely() {
        let stage = |input: Value| {
            read(json!({"workflow_id": "w", "stage": "s", "input": input, "deps": {}}))
                .unwrap()
                .stage()
                .map(|s| s.input.0.name.clone())
        };
        assert_eq!(
            stage(json!({"name": "shop", "other": 1})),
            Some(Some("shop".into()))
        );
        assert_eq!(stage(json!({"name": 5})), Some(None));
        assert_eq!(stage(json!(null)), Some(None));
        assert_eq!(stage(json!([1, 2])), Some(None));
        // No workflow input at all.
        let t = read(json!({"workflow_id": "w", "stage": "s"})).unwrap();
        assert_eq!(t.stage().map(|s| &s.input.0), Some(&Named::default()));
        // Not a stage input after all: refused, saying so.
        let e = read(json!({"workflow_id": "w", "stage": 3})).unwrap_err();
        assert!(e.message().contains("stage input"), "{e}");
    }

    #[test]
    fn dependency_outputs_and_compensation_fields_read_as_types() {
        let sha = "b".repeat(64);
        let t = read(json!({
            "workflow_id": "w", "stage": "deploy", "input": {},
            "deps": {
                "a": {"findings": []},
                "b": {"artifact": {"sha256": sha, "files": 2}},
                "c": {"artifact": "c"},
                "d": "not an object"
            },
            "output": {"release": "r1"}, "action": "rollback", "name": "shop"
        }))
        .unwrap();
        let s = t.stage().unwrap();
        let found: Vec<String> = dep_outputs::<WithArtifact, _>(s)
            .map(|w| w.artifact.into_sha256())
            .collect();
        assert_eq!(found, [sha.clone(), "c".into()]);
        assert_eq!(
            extra_as::<Named, _>(s),
            Some(Named {
                name: Some("shop".into())
            })
        );
        assert_eq!(s.extra_str("action"), Some("rollback"));
        assert_eq!(
            extra_as::<ArtifactRequest, _>(s),
            Some(ArtifactRequest::default())
        );
    }

    #[test]
    fn an_artifact_is_a_digest_or_a_reference() {
        let a = |v: Value| {
            serde_json::from_value::<ArtifactRequest>(v)
                .unwrap()
                .artifact
        };
        assert_eq!(
            a(json!({"artifact": "x"})),
            Some(ArtifactField::Sha256("x".into()))
        );
        assert_eq!(
            a(json!({"artifact": {"sha256": "x", "bytes": 10}})).map(ArtifactField::into_sha256),
            Some("x".into())
        );
        for other in [
            json!({"artifact": 5}),
            json!({"artifact": {"sha": "x"}}),
            json!({}),
        ] {
            assert_eq!(a(other), None);
        }
        let e = serde_json::from_value::<WithArtifact>(json!({"artifact": 5})).unwrap_err();
        assert!(e.to_string().contains("\"<sha256>\""), "{e}");
    }
}
