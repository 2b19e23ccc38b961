//! Workflow definitions: a DAG of stages.
//!
//! ```yaml
//! name: sdlc
//! stages:
//!   - name: scaffold
//!     agent: scaffold
//!     timeout: 5m
//!   - name: deployment
//!     agent: deployment
//!     depends_on: [integration]
//!     approval: true
//!     compensate:
//!       input: { action: rollback }
//! ```

use crate::error::{DefinitionError, Result};
use agent_sdk::schemas::{AgentType, limits};
use petgraph::Direction;
use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Largest definition accepted by the parsers, in bytes (256 KiB;
/// [`limits::MAX_DEFINITION_BYTES`]).
pub const MAX_DEFINITION_BYTES: usize = limits::MAX_DEFINITION_BYTES;
/// Most stages a definition may have (256; [`limits::MAX_STAGES`]): each
/// names an agent type whose results the orchestrator consumes.
pub const MAX_STAGES: usize = limits::MAX_STAGES;
/// Longest definition or stage name.
pub const MAX_NAME_LEN: usize = 64;
/// Range of `max_attempts` when given.
pub const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=100;
/// Shortest stage timeout when given.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest stage timeout when given (7 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A workflow definition as written by its author (YAML or JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Name: 1–64 of `a-z 0-9 - _`.
    #[cfg_attr(
        feature = "utoipa",
        schema(pattern = "^[a-z0-9_-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub name: String,
    /// Version, assigned when the definition is registered (1, 2, …);
    /// a running workflow keeps the version it started with.
    #[cfg_attr(feature = "utoipa", schema(value_type = u64, maximum = 4294967295.0))]
    #[serde(default, deserialize_with = "integral::u32")]
    pub version: u32,
    /// What the workflow is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The stages (1–256); order is free, `depends_on` decides it.
    #[cfg_attr(feature = "utoipa", schema(min_items = 1, max_items = 256))]
    pub stages: Vec<StageDef>,
}

/// One stage of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StageDef {
    /// Name, unique in the definition: 1–64 of `a-z 0-9 - _`.
    #[cfg_attr(
        feature = "utoipa",
        schema(pattern = "^[a-z0-9_-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub name: String,
    /// Agent type that runs the stage: 1–64 of `a-z 0-9 - _`, not a word
    /// of the stream commands.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            pattern = "^(?!(?:streams|group|count|block|noack|id|mkstream|justid|force|idle|time|retrycount|lastid|maxlen|minid|limit|entriesread|nomkstream|create|destroy|setid|delconsumer|createconsumer)$)[a-z0-9_-]{1,64}$",
            min_length = 1,
            max_length = 64
        )
    )]
    pub agent: String,
    /// Stages that must complete first (each once, none the stage itself).
    #[cfg_attr(feature = "utoipa", schema(schema_with = depends_on_schema))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Deadline of the stage from dispatch to result, 1 s to 7 d, one number
    /// and a unit (`30s`, `5m`); also the handler timeout sent with its task.
    /// The orchestrator's default when absent.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>, example = "5m", pattern = "^[1-9][0-9]{0,8}(?:ms|s|m|h|d)$"))]
    pub timeout: Option<Duration>,
    /// Attempts the agent may make (retryable failures), 1–100; its default when absent.
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 100))]
    #[serde(
        default,
        deserialize_with = "integral::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_attempts: Option<u32>,
    /// The task that undoes this stage when a later one fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Compensation>,
    /// A person must approve before the stage starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
    /// How long an approval may be awaited, 1 s to 7 d (`24h`), only with
    /// `approval: true`; past it the stage is rejected and the workflow fails
    /// (compensated). Waits forever when absent.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>, example = "24h", pattern = "^[1-9][0-9]{0,8}(?:ms|s|m|h|d)$"))]
    pub approval_timeout: Option<Duration>,
}

/// How to undo a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Compensation {
    /// Agent type that runs the compensation; the stage's own when absent.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            pattern = "^(?!(?:streams|group|count|block|noack|id|mkstream|justid|force|idle|time|retrycount|lastid|maxlen|minid|limit|entriesread|nomkstream|create|destroy|setid|delconsumer|createconsumer)$)[a-z0-9_-]{1,64}$",
            min_length = 1,
            max_length = 64
        )
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Merged over the stage's task input (e.g. `{"action": "rollback"}`):
    /// an object, or null.
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub input: serde_json::Value,
}

/// Stages planned into levels: every stage of a level depends only on stages
/// of earlier levels, so a level's stages can run in parallel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Stage names, level by level; within a level in definition order.
    pub levels: Vec<Vec<String>>,
}

impl Definition {
    /// Parses a definition written in YAML.
    ///
    /// Refuses inputs over [`MAX_DEFINITION_BYTES`] before parsing, and more
    /// than [`MAX_STAGES`] stages. Does not [`validate`](Self::validate).
    /// (The YAML parser stops at 128 levels by itself; `validate` bounds the
    /// only free-form field, `compensate.input`.)
    pub fn from_yaml(text: &str) -> Result<Self> {
        check_size(text)?;
        let parse = |e: serde_norway::Error| {
            let m = e.to_string();
            // Well-formed YAML holding a whole number no JSON value can
            // (beyond 64 bits): a value refused, not a text that does not parse.
            if m.contains("number out of range") {
                DefinitionError::Invalid(format!(
                    "a number is out of range (whole numbers must fit in 64 bits): {m}"
                ))
            } else {
                DefinitionError::Parse(m)
            }
        };
        // Straight into the struct first: its errors say where (line, column).
        let def: Self = serde_norway::from_str(text).map_err(parse)?;
        // Then through a JSON value, so YAML's scalars keep their types: read
        // straight into a struct, `name: 123` or `description: true` became
        // strings, which the API document (and JSON) refuse.
        // A float is the exception: YAML 1.1 writers (PyYAML) leave a string
        // such as `8e+87` unquoted, which YAML 1.2 reads as a number; the
        // text the author wrote is the string they meant.
        let value: serde_json::Value = serde_norway::from_str(text).map_err(parse)?;
        if let Err(e) = serde_json::from_value::<Self>(value) {
            let m = e.to_string();
            if !(m.contains("floating point") && m.contains("expected a string")) {
                return Err(DefinitionError::Parse(format!(
                    "{m} (YAML scalars keep their types, as in JSON)"
                )));
            }
        }
        check_stage_count(def.stages.len(), MAX_STAGES)?;
        Ok(def)
    }

    /// Parses a definition written in JSON; same limits as
    /// [`from_yaml`](Self::from_yaml), and nesting within
    /// [`limits::MAX_DEPTH`] like every JSON body.
    pub fn from_json(text: &str) -> Result<Self> {
        check_size(text)?;
        limits::check_json_depth("the definition", text.as_bytes(), limits::MAX_DEPTH)
            .map_err(|e| DefinitionError::Invalid(e.to_string()))?;
        let def: Self =
            serde_json::from_str(text).map_err(|e| DefinitionError::Parse(e.to_string()))?;
        check_stage_count(def.stages.len(), MAX_STAGES)?;
        Ok(def)
    }

    /// Parses JSON when the first non-whitespace character is `{`, YAML otherwise.
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Self::from_yaml(text)
        }
    }

    /// The stage named `name`, if any.
    pub fn stage(&self, name: &str) -> Option<&StageDef> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The built-in software-delivery pipeline, `sdlc` version 1:
    /// scaffold → validation → e2e → integration → deployment, each stage run
    /// by the agent of its name, with deployment rolled back by
    /// `{"action": "rollback"}` when it must be undone.
    pub fn sdlc() -> Self {
        const STAGES: [(&str, u64); 5] = [
            ("scaffold", 5),
            ("validation", 5),
            ("e2e", 15),
            ("integration", 5),
            ("deployment", 10),
        ];
        let stages = STAGES
            .iter()
            .enumerate()
            .map(|(i, &(name, minutes))| StageDef {
                name: name.to_owned(),
                agent: name.to_owned(),
                depends_on: i
                    .checked_sub(1)
                    .map(|prev| vec![STAGES[prev].0.to_owned()])
                    .unwrap_or_default(),
                timeout: Some(Duration::from_secs(minutes * 60)),
                max_attempts: Some(3),
                compensate: (name == "deployment").then(|| Compensation {
                    agent: None,
                    input: serde_json::json!({ "action": "rollback" }),
                }),
                approval: false,
                approval_timeout: None,
            })
            .collect();
        Self {
            name: "sdlc".to_owned(),
            version: 1,
            description: Some(
                "Software delivery: scaffold, validation, e2e, integration, deployment".to_owned(),
            ),
            stages,
        }
    }

    /// Checks every rule and plans the stages into parallel levels.
    ///
    /// Rules: definition and stage names 1–64 of `a-z 0-9 - _`; agents (and
    /// compensation agents) valid agent types; 1 to [`MAX_STAGES`] stages with
    /// unique names; every dependency names another stage, once; no cycles;
    /// `max_attempts` in [`MAX_ATTEMPTS`]; `timeout` within
    /// [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`]; `compensate.input` an object or
    /// null within the input limits ([`limits::check_input`]).
    ///
    /// A stage's level is 0 without dependencies, else 1 + the highest level
    /// of its dependencies; within a level stages keep definition order.
    /// Runs in O(stages + dependencies).
    ///
    /// A cycle is reported in running order, from the stage defined first
    /// back to it: `a -> b -> c -> a` means b depends on a, c on b, a on c.
    pub fn validate(&self) -> Result<Plan> {
        self.validate_within(MAX_STAGES)
    }

    /// [`validate`](Self::validate) with another stage limit: for measuring
    /// the planner beyond what is accepted (`examples/plan_bench.rs`).
    pub fn validate_within(&self, max_stages: usize) -> Result<Plan> {
        check_name("definition name", &self.name).map_err(DefinitionError::Invalid)?;
        if self.stages.is_empty() {
            return Err(DefinitionError::Invalid(format!(
                "definition {:?} has no stages",
                self.name
            )));
        }
        check_stage_count(self.stages.len(), max_stages)?;

        // Each stage alone, and the name → index map.
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            check_name("stage name", &stage.name).map_err(|why| {
                DefinitionError::Invalid(format!("stage #{} of {:?}: {why}", i + 1, self.name))
            })?;
            stage.check_fields()?;
            if index.insert(&stage.name, i).is_some() {
                return Err(DefinitionError::DuplicateStage(stage.name.clone()));
            }
        }

        // Dependencies; edges run from a dependency to the stage that waits for it.
        let edge_count = self.stages.iter().map(|s| s.depends_on.len()).sum();
        let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(self.stages.len(), edge_count);
        for _ in &self.stages {
            graph.add_node(());
        }
        // `seen[d] == i + 1` once stage `i` has listed `d`: finds repeats in O(1)
        // without clearing a set per stage.
        let mut seen = vec![0usize; self.stages.len()];
        for (i, stage) in self.stages.iter().enumerate() {
            for dep in &stage.depends_on {
                let Some(&d) = index.get(dep.as_str()) else {
                    return Err(DefinitionError::UnknownDependency {
                        stage: stage.name.clone(),
                        missing: dep.clone(),
                    });
                };
                if d == i {
                    return Err(DefinitionError::Invalid(format!(
                        "stage {:?} depends on itself",
                        stage.name
                    )));
                }
                if seen[d] == i + 1 {
                    return Err(DefinitionError::Invalid(format!(
                        "stage {:?} lists {dep:?} more than once in depends_on",
                        stage.name
                    )));
                }
                seen[d] = i + 1;
                graph.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
            }
        }

        let order = toposort(&graph, None).map_err(|cycle| DefinitionError::Cycle {
            cycle: self.cycle_through(&graph, cycle.node_id()),
        })?;

        let mut level = vec![0usize; self.stages.len()];
        let mut depth = 0;
        for node in order {
            let l = graph
                .neighbors_directed(node, Direction::Incoming)
                .map(|dep| level[dep.index()] + 1)
                .max()
                .unwrap_or(0);
            level[node.index()] = l;
            depth = depth.max(l + 1);
        }
        let mut levels = vec![Vec::new(); depth];
        for (stage, &l) in self.stages.iter().zip(&level) {
            levels[l].push(stage.name.clone());
        }
        Ok(Plan { levels })
    }

    /// The stages of one cycle through `start`, in the order they would have
    /// to run (each stage is a dependency of the next), starting and ending
    /// with the one defined first. Breadth-first, so the cycle is a shortest one.
    fn cycle_through(&self, graph: &DiGraph<(), ()>, start: NodeIndex) -> Vec<String> {
        const NONE: usize = usize::MAX;
        let mut parent = vec![NONE; graph.node_count()];
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(node) = queue.pop_front() {
            for next in graph.neighbors(node) {
                if next == start {
                    last = Some(node);
                    break 'search;
                }
                if parent[next.index()] == NONE {
                    parent[next.index()] = node.index();
                    queue.push_back(next);
                }
            }
        }
        // petgraph reports a node of a strongly connected component with more
        // than one node, so the search always finds a way back; if not, name
        // the node alone rather than invent a cycle.
        let Some(mut node) = last.map(NodeIndex::index) else {
            return vec![self.stages[start.index()].name.clone()];
        };
        let mut path = vec![node];
        while node != start.index() {
            node = parent[node];
            path.push(node);
        }
        path.reverse();
        let first = path
            .iter()
            .enumerate()
            .min_by_key(|&(_, &n)| n)
            .map_or(0, |(pos, _)| pos);
        path.rotate_left(first);
        path.push(path[0]);
        path.into_iter()
            .map(|n| self.stages[n].name.clone())
            .collect()
    }
}

impl StageDef {
    /// Checks the fields that need no other stage.
    fn check_fields(&self) -> Result<()> {
        let invalid = |why: String| {
            Err(DefinitionError::Invalid(format!(
                "stage {:?}: {why}",
                self.name
            )))
        };
        if let Err(e) = AgentType::new(self.agent.as_str()) {
            return invalid(e.to_string());
        }
        if let Some(n) = self.max_attempts
            && !MAX_ATTEMPTS.contains(&n)
        {
            return invalid(format!(
                "max_attempts {n} is out of range {}..={}",
                MAX_ATTEMPTS.start(),
                MAX_ATTEMPTS.end()
            ));
        }
        if let Some(t) = self.timeout
            && !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t)
        {
            return invalid(format!(
                "timeout {} is out of range {}..={}",
                humantime::format_duration(t),
                humantime::format_duration(MIN_TIMEOUT),
                humantime::format_duration(MAX_TIMEOUT)
            ));
        }
        if let Some(t) = self.approval_timeout {
            if !self.approval {
                return invalid("approval_timeout needs approval: true".into());
            }
            if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t) {
                return invalid(format!(
                    "approval_timeout {} is out of range {}..={}",
                    humantime::format_duration(t),
                    humantime::format_duration(MIN_TIMEOUT),
                    humantime::format_duration(MAX_TIMEOUT)
                ));
            }
        }
        if let Some(c) = &self.compensate {
            if let Some(agent) = &c.agent
                && let Err(e) = AgentType::new(agent.as_str())
            {
                return invalid(format!("compensate: {e}"));
            }
            if !(c.input.is_object() || c.input.is_null()) {
                return invalid(format!(
                    "compensate.input must be a JSON object or null, not {}",
                    json_kind(&c.input)
                ));
            }
            // Its fields travel in the compensation's task, beside the
            // stage input's: the same bounds as a workflow's input.
            if let Err(e) = limits::check_input("compensate.input", &c.input) {
                return invalid(e.to_string());
            }
        }
        Ok(())
    }
}

/// `depends_on` in the API document: stage names, each at most once.
#[cfg(feature = "utoipa")]
fn depends_on_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .pattern(Some("^[a-z0-9_-]{1,64}$"))
                .min_length(Some(1))
                .max_length(Some(MAX_NAME_LEN)),
        )
        .unique_items(true)
        .description(Some(
            "Stages that must complete first (each once, none the stage itself).",
        ))
        .build()
}

/// Checks a definition or stage name: 1–64 of `a-z 0-9 - _`.
fn check_name(what: &str, value: &str) -> std::result::Result<(), String> {
    let why = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_NAME_LEN {
        "is longer than 64 bytes"
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        "may hold only a-z, 0-9, '-' and '_'"
    } else {
        return Ok(());
    };
    let shown: String = value.chars().take(80).collect();
    Err(format!("invalid {what} {shown:?}: {why}"))
}

fn check_size(text: &str) -> Result<()> {
    if text.len() > MAX_DEFINITION_BYTES {
        return Err(DefinitionError::Invalid(format!(
            "definition of {} bytes is over the limit of {MAX_DEFINITION_BYTES} bytes (256 KiB)",
            text.len()
        )));
    }
    Ok(())
}

fn check_stage_count(n: usize, max: usize) -> Result<()> {
    if n > max {
        return Err(DefinitionError::Invalid(format!(
            "definition has {n} stages, over the stage limit of {max}"
        )));
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Durations written the human way (`30s`, `5m`, `1h 30m`).
mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&canonical(*d)),
            None => s.serialize_none(),
        }
    }

    /// One number and the largest unit that holds it whole (`90s`, `36h`,
    /// `1500ms`): the form the API document states.
    pub fn canonical(d: Duration) -> String {
        let ms = d.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return format!("{}{unit}", ms / size);
            }
        }
        format!("{ms}ms")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s)
                .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?}: {e}")))
        })
        .transpose()
    }
}

pub mod random;
#[cfg(test)]
mod tests;

/// Serde readers for integers written as a JSON number with a zero
/// fraction (`37.0`): JSON Schema's `integer`, which the API document
/// states, admits them, and serde's `u32` would not.
pub mod integral {
    use serde::Deserialize;
    use serde::de::{Deserializer, Error, Unexpected, Visitor};
    use std::fmt;

    struct Integral(u32);

    impl<'de> Deserialize<'de> for Integral {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = u32;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an integer from 0 to 4294967295")
                }
                fn visit_u64<E: Error>(self, v: u64) -> Result<u32, E> {
                    u32::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
                }
                fn visit_i64<E: Error>(self, v: i64) -> Result<u32, E> {
                    u32::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
                }
                fn visit_f64<E: Error>(self, v: f64) -> Result<u32, E> {
                    if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                        // In range and whole, so the cast is exact.
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        Ok(v as u32)
                    } else {
                        Err(E::invalid_value(Unexpected::Float(v), &self))
                    }
                }
            }
            d.deserialize_any(V).map(Integral)
        }
    }

    /// A `u32`, `37.0` included.
    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        Integral::deserialize(d).map(|i| i.0)
    }

    /// An optional `u32`, `37.0` included.
    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Option::<Integral>::deserialize(d).map(|o| o.map(|i| i.0))
    }
}
