//! Turning a raw stream entry into a task to run, or into a reason to dead-letter it.

use crate::stream::Entry;
use schemas::codec::DecodeLimits;
use schemas::{Encoding, TaskEnvelope, fields, names};
use serde::de::{DeserializeOwned, IgnoredAny};

/// A decoded task, ready for its handler.
#[derive(Debug)]
pub(crate) struct Delivery<I> {
    pub(crate) entry: Entry,
    pub(crate) envelope: TaskEnvelope<I>,
    pub(crate) attempt: u32,
    pub(crate) encoding: Encoding,
}

/// An entry that will never run: dead-lettered at once, never retried.
#[derive(Debug)]
pub(crate) struct Malformed {
    pub(crate) entry: Entry,
    /// The task id, when the entry got far enough to tell it (so its owner
    /// can be told through a `dead_lettered` result).
    pub(crate) task_id: Option<String>,
    pub(crate) workflow_id: Option<String>,
    pub(crate) stage: Option<String>,
    pub(crate) error: String,
    pub(crate) encoding: Encoding,
    pub(crate) attempt: u32,
}

/// What an entry turned out to be.
#[derive(Debug)]
pub(crate) enum Parsed<I> {
    Task(Box<Delivery<I>>),
    Malformed(Box<Malformed>),
}

/// Fields beyond the body are small; this much room is allowed for them.
const FIELD_OVERHEAD: usize = 4096;

/// Parses `entry` for an agent whose input is `I`.
pub(crate) fn parse<I: DeserializeOwned>(entry: Entry, limits: DecodeLimits) -> Parsed<I> {
    let attempt = match entry.field(fields::ATTEMPT) {
        None => Ok(1),
        Some(raw) => std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("field {:?} is not a positive integer", fields::ATTEMPT)),
    };
    let Some(body) = entry.field(fields::BODY) else {
        return malformed(
            entry,
            format!("entry has no {:?} field", fields::BODY),
            Encoding::MsgPack,
            None,
        );
    };
    let encoding = Encoding::sniff(body);
    if entry.size() > limits.max_bytes + FIELD_OVERHEAD {
        let error = format!(
            "entry of {} bytes is over the limit of {} bytes",
            entry.size(),
            limits.max_bytes
        );
        return malformed(entry, error, encoding, None);
    }
    let attempt = match attempt {
        Ok(a) => a,
        Err(error) => return malformed(entry, error, encoding, None),
    };
    match encoding.decode::<TaskEnvelope<I>>(body, limits) {
        Ok(envelope) => {
            if envelope.v != schemas::PROTOCOL_VERSION {
                let error = schemas::Error::UnsupportedVersion {
                    found: envelope.v,
                    supported: schemas::PROTOCOL_VERSION,
                }
                .to_string();
                let ids = (envelope.id, envelope.workflow_id, envelope.stage);
                return malformed(entry, error, encoding, Some(ids));
            }
            if let Err(e) = names::validate_task_id(&envelope.id) {
                return malformed(entry, e.to_string(), encoding, None);
            }
            Parsed::Task(Box::new(Delivery {
                entry,
                envelope,
                attempt,
                encoding,
            }))
        }
        Err(e) => {
            // Tell "garbage" from "a valid envelope whose input does not fit
            // this agent" and from "a version we do not speak": the message
            // is what an operator reads in the DLQ.
            let outer = encoding
                .decode::<TaskEnvelope<IgnoredAny>>(body, limits)
                .ok();
            let error = match &outer {
                Some(env) if env.v != schemas::PROTOCOL_VERSION => {
                    schemas::Error::UnsupportedVersion {
                        found: env.v,
                        supported: schemas::PROTOCOL_VERSION,
                    }
                    .to_string()
                }
                Some(_) => format!("input does not match the agent's input type: {e}"),
                None => e.to_string(),
            };
            let ids = outer.map(|env| (env.id, env.workflow_id, env.stage));
            malformed(entry, error, encoding, ids)
        }
    }
}

/// `ids`: task id, workflow id and stage from the body, when it decoded far
/// enough; the plain fields are used otherwise.
fn malformed<I>(
    entry: Entry,
    error: String,
    encoding: Encoding,
    ids: Option<(String, Option<String>, Option<String>)>,
) -> Parsed<I> {
    let plain = |name| {
        entry
            .field(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    let (task_id, workflow_id, stage) = match ids {
        Some((id, wf, stage)) => (Some(id), wf, stage),
        None => (
            plain(fields::ID),
            plain(fields::WORKFLOW),
            plain(fields::STAGE),
        ),
    };
    // Only a well-formed id may name a result key.
    let task_id = task_id.filter(|id| names::validate_task_id(id).is_ok());
    let attempt = plain(fields::ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    Parsed::Malformed(Box::new(Malformed {
        entry,
        task_id,
        workflow_id,
        stage,
        error,
        encoding,
        attempt,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct In {
        n: u32,
    }

    fn entry(fields: &[(&str, &[u8])]) -> Entry {
        Entry {
            id: "1-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        }
    }

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    #[test]
    fn decodes_json_and_msgpack() {
        let json = entry(&[("body", br#"{"v":1,"id":"t1","input":{"n":3}}"#)]);
        let Parsed::Task(d) = parse::<In>(json, limits()) else {
            panic!("malformed")
        };
        assert_eq!(
            (d.envelope.input.n, d.attempt, d.encoding),
            (3, 1, Encoding::Json)
        );

        let body = Encoding::MsgPack
            .encode(&TaskEnvelope::new("t2", serde_json::json!({"n": 4})))
            .unwrap();
        let mp = entry(&[("body", &body), ("attempt", b"3")]);
        let Parsed::Task(d) = parse::<In>(mp, limits()) else {
            panic!("malformed")
        };
        assert_eq!(
            (d.envelope.input.n, d.attempt, d.encoding),
            (4, 3, Encoding::MsgPack)
        );
    }

    fn error_of(e: Entry) -> Malformed {
        match parse::<In>(e, limits()) {
            Parsed::Malformed(m) => *m,
            Parsed::Task(_) => panic!("accepted"),
        }
    }

    #[test]
    fn classifies_malformed_entries() {
        let m = error_of(entry(&[("id", b"t9"), ("body", b"\xc1garbage")]));
        assert_eq!(m.task_id.as_deref(), Some("t9"));
        assert!(m.error.contains("msgpack"), "{}", m.error);

        let m = error_of(entry(&[("body", br#"{"v":2,"id":"t3","input":{"n":1}}"#)]));
        assert!(
            m.error.contains("unsupported protocol version 2"),
            "{}",
            m.error
        );
        assert_eq!(m.task_id.as_deref(), Some("t3"));

        let m = error_of(entry(&[("body", br#"{"v":1,"id":"t4","input":{"x":1}}"#)]));
        assert!(m.error.contains("input does not match"), "{}", m.error);

        let m = error_of(entry(&[("nobody", b"x")]));
        assert!(m.error.contains("no \"body\""), "{}", m.error);

        let m = error_of(entry(&[(
            "body",
            br#"{"v":1,"id":"bad id","input":{"n":1}}"#,
        )]));
        assert!(m.error.contains("task id"), "{}", m.error);
        assert_eq!(m.task_id, None);

        let m = error_of(entry(&[
            ("attempt", b"zero"),
            ("body", br#"{"v":1,"id":"t","input":{"n":1}}"#),
        ]));
        assert!(m.error.contains("attempt"), "{}", m.error);

        let big = vec![b' '; 2 * 1024 * 1024];
        let m = error_of(entry(&[("body", &big)]));
        assert!(m.error.contains("over the limit"), "{}", m.error);
    }
}
