//! The formats of the names and values the API takes, as the OpenAPI
//! document states them: each is a schema type here, used by the handlers'
//! annotations (`value_type = ...`), and the pattern it carries is the one
//! the server's check enforces, so a client generated from the document
//! sends only what the server accepts, and what breaks the document is
//! refused.
//!
//! Names are checked by `schemas::names` (byte classes, lengths, and the
//! stream commands' reserved words, case-insensitively); the patterns below
//! spell out the same rules. Durations and entry ids are checked here.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema::SchemaType};

/// `(?!(?:w1|w2|…)$)`: none of the stream commands' reserved words, in
/// any case when `any_case` (the names that allow upper case).
fn not_reserved(any_case: bool) -> String {
    reserved_before(any_case, "$")
}

/// [`not_reserved`] for a name followed by `end` (a regex) rather than the
/// end of the string.
fn reserved_before(any_case: bool, end: &str) -> String {
    let words: Vec<String> = agent_sdk::schemas::names::RESERVED
        .iter()
        .map(|w| {
            if any_case {
                w.chars()
                    .map(|c| format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase()))
                    .collect()
            } else {
                w.to_ascii_lowercase()
            }
        })
        .collect();
    format!("(?!(?:{}){end})", words.join("|"))
}

/// A string schema; `max` is the longest when the pattern leaves the
/// length open (names). Where the pattern fixes the length (entry ids,
/// durations) none is given: schemathesis took a `minLength` string such as
/// `0` for a valid entry id although the pattern refuses it.
fn string(description: &str, pattern: String, max: Option<usize>, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(max.map(|_| 1))
        .max_length(max)
        .examples([serde_json::Value::from(example)])
        .into()
}

/// Declares a unit type whose schema is `$schema`, under its own name.
macro_rules! format_type {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

format_type!(
    /// An agent type: 1–64 of `a-z 0-9 - _`, not a reserved word.
    AgentTypeName => string(
        "Agent type: 1–64 of `a-z 0-9 - _`, not a word of the stream commands (`group`, `count`, …)",
        format!("^{}[a-z0-9_-]{{1,64}}$", not_reserved(false)),
        Some(agent_sdk::schemas::names::MAX_NAME_LEN),
        "validation",
    )
);

format_type!(
    /// A page cursor of `GET /agents`: the agent type it pages, and where.
    AgentsCursor => string(
        "Page cursor: `<agent type>:<position>`, a `next_cursor` of `GET /agents`",
        format!("^{}[a-z0-9_-]{{1,64}}:[0-9]{{1,20}}$", reserved_before(false, ":")),
        None,
        "e2e:0",
    )
);

format_type!(
    /// A definition or stage name: 1–64 of `a-z 0-9 - _`.
    Name => string(
        "Definition or stage name: 1–64 of `a-z 0-9 - _`",
        "^[a-z0-9_-]{1,64}$".to_owned(),
        Some(orchestrator::definition::MAX_NAME_LEN),
        "sdlc",
    )
);

format_type!(
    /// A workflow id: 1–48 of `A-Z a-z 0-9 - _ .`, not a reserved word.
    WorkflowId => string(
        "Workflow id: 1–48 of `A-Z a-z 0-9 - _ .`, not a word of the stream commands",
        format!("^{}[A-Za-z0-9._-]{{1,48}}$", not_reserved(true)),
        Some(agent_sdk::schemas::names::MAX_WORKFLOW_ID_LEN),
        "wf-1",
    )
);

format_type!(
    /// A task id or an idempotency key: 1–128 of `A-Z a-z 0-9 - _ . : @ / + =`.
    TaskKey => string(
        "Task id or idempotency key: 1–128 of `A-Z a-z 0-9 - _ . : @ / + =`, not a word of the stream commands",
        format!("^{}[A-Za-z0-9._:@/+=-]{{1,128}}$", not_reserved(true)),
        Some(agent_sdk::schemas::names::MAX_ID_LEN),
        "order-42",
    )
);

format_type!(
    /// A stream entry id, `<ms>-<seq>`.
    EntryIdText => string(
        "Stream entry id: `<ms>-<seq>`, each 1–19 digits",
        ENTRY_ID_PATTERN.to_owned(),
        None,
        "1700000000000-0",
    )
);

format_type!(
    /// A duration: a whole number and a unit.
    DurationText => string(
        "Duration: 1–9 digits and a unit, `ms`, `s`, `m`, `h` or `d` (`30s`, `5m`)",
        DURATION_PATTERN.to_owned(),
        None,
        "30s",
    )
);

format_type!(
    /// A moment: a duration ago, or an RFC 3339 UTC time.
    SinceText => string(
        "A duration ago (`2h`: 1–9 digits and `ms`, `s`, `m`, `h` or `d`) or a UTC time \
         (`2026-11-23T10:00:00Z`, year from 1970, day of month 01–28)",
        format!("^(?:{}|{})$", &DURATION_PATTERN[1..DURATION_PATTERN.len() - 1], &TIME_PATTERN[1..TIME_PATTERN.len() - 1]),
        None,
        "2h",
    )
);

format_type!(
    /// How long to wait: 0–30 whole seconds.
    WaitText => string(
        "0–30 whole seconds (`5s`)",
        "^(?:[0-9]|[12][0-9]|30)s$".to_owned(),
        None,
        "5s",
    )
);

/// Parses a wait of [`WaitText`]: 0 to `max` (30 s) in whole seconds.
pub fn wait(s: &str, max: std::time::Duration) -> Result<std::time::Duration, String> {
    let bad = || {
        format!(
            "wait {s:?}: write 0–{}s in whole seconds (5s)",
            max.as_secs()
        )
    };
    // No leading zero: `05s` is not in the document's pattern.
    let n = s
        .strip_suffix('s')
        .filter(|n| digits(n, 1, 2) && (n.len() == 1 || !n.starts_with('0')))
        .ok_or_else(bad)?;
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = std::time::Duration::from_secs(n);
    if d > max {
        return Err(bad());
    }
    Ok(d)
}

format_type!(
    /// One server-sent event, as a client reads it off the stream.
    SseEvent => ObjectBuilder::new()
        .description(Some("One server-sent event: its `event` name, its `id` (the per-workflow \
            stream's log entry id), and its `data`, JSON text"))
        .property("event", ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)))
        .property("id", ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)))
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .content_media_type("application/json"),
        )
        .property("retry", ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)))
        .into()
);

/// The pattern of [`EntryIdText`].
pub const ENTRY_ID_PATTERN: &str = "^[0-9]{1,19}-[0-9]{1,19}$";
/// The pattern of [`DurationText`].
pub const DURATION_PATTERN: &str = "^[0-9]{1,9}(?:ms|s|m|h|d)$";
/// The UTC times [`SinceText`] takes: years from 1970, days 01–28, so
/// every match is a date the parser takes.
const TIME_PATTERN: &str = "^(?:19[7-9][0-9]|[2-9][0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?Z$";

/// Whether `s` is all ASCII digits, `min..=max` of them.
fn digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `s` matches [`ENTRY_ID_PATTERN`].
pub fn is_entry_id(s: &str) -> bool {
    s.split_once('-')
        .is_some_and(|(ms, seq)| digits(ms, 1, 19) && digits(seq, 1, 19))
}

/// Whether `s` is a workflow list cursor: `<ms>:<anything>`, ms 1–19 digits.
pub fn is_cursor(s: &str) -> bool {
    s.split_once(':').is_some_and(|(ms, _)| digits(ms, 1, 19))
}

/// Parses a duration of [`DURATION_PATTERN`]; anything else (`1h 30m`,
/// `5min`, `0.5s`) is refused with the reason, so the API takes exactly
/// what its document says.
pub fn duration(what: &str, s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{what} {s:?}: write 1–9 digits and a unit, ms, s, m, h or d (30s, 5m)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    if !digits(n, 1, 9) {
        return Err(bad());
    }
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_millis(n * ms))
}

/// Whether `s` matches the time half of [`SinceText`].
fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        digits(t, t.len().max(1), t.len()).then(|| t.parse().ok())?
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if b.len() < 20 || !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':'))
    {
        return false;
    }
    // Years from 1970: the parser takes no earlier time.
    let ok = num(0..4).is_some_and(|y| y >= 1970)
        && num(5..7).is_some_and(|m| (1..=12).contains(&m))
        && num(8..10).is_some_and(|d| (1..=28).contains(&d))
        && num(11..13).is_some_and(|h| h <= 23)
        && num(14..16).is_some_and(|m| m <= 59)
        && num(17..19).is_some_and(|sec| sec <= 59);
    let rest = &s[19..];
    ok && match rest.strip_prefix('.') {
        Some(frac) => frac.strip_suffix('Z').is_some_and(|f| digits(f, 1, 9)),
        None => rest == "Z",
    }
}

/// Checks a `since` against [`SinceText`]'s pattern (the parse itself is
/// `ops::dlq::parse_since`, which takes more).
pub fn check_since(s: &str) -> Result<(), String> {
    if duration("since", s).is_ok() || is_time(s) {
        Ok(())
    } else {
        Err(format!(
            "since {s:?}: write a duration (2h: 1–9 digits and ms, s, m, h or d) \
             or a UTC time (2026-11-23T10:00:00Z)"
        ))
    }
}

/// A request body that must be a JSON object: serde reads a struct from a
/// JSON array too (`[null, null]` filled its fields in order), which the
/// document's `type: object` refuses; this reads only a map.
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
            .map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_digits_and_one_unit() {
        assert_eq!(duration("d", "30s"), Ok(std::time::Duration::from_secs(30)));
        assert_eq!(
            duration("d", "999999999d").map(|d| d.as_secs()),
            Ok(999_999_999 * 86_400)
        );
        for bad in [
            "",
            "5",
            "1h 30m",
            "5min",
            "0.5s",
            "-1s",
            "1234567890s",
            "s",
            "1S",
            "1s\n",
        ] {
            assert!(duration("d", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn since_is_a_duration_or_a_utc_time() {
        for good in ["2h", "2026-11-23T10:00:00Z", "2026-02-28T23:59:59.5Z"] {
            assert!(check_since(good).is_ok(), "{good}");
        }
        for bad in [
            "0000-01-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-23T10:00:00+01:00",
            "2026-11-23",
            "yesterday",
            "2026-13-01T00:00:00Z",
        ] {
            assert!(check_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entry_ids_have_bounded_parts() {
        assert!(is_entry_id("1700000000000-0"));
        for bad in ["", "1-", "-1", "1-1-1", "x-1", "12345678901234567890-0"] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }
}
