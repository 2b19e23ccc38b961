//! Tests of parsing, validation and planning.

use super::random::random_dag;
use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashSet;

/// A stage run by the agent `work`, depending on `deps`.
fn stage(name: &str, deps: &[&str]) -> StageDef {
    StageDef {
        name: name.to_owned(),
        agent: "work".to_owned(),
        depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
        timeout: None,
        max_attempts: None,
        compensate: None,
        approval: false,
        approval_timeout: None,
    }
}

fn def(stages: Vec<StageDef>) -> Definition {
    Definition {
        name: "test".to_owned(),
        version: 1,
        description: None,
        stages,
    }
}

fn levels(plan: &Plan) -> Vec<Vec<&str>> {
    plan.levels
        .iter()
        .map(|l| l.iter().map(String::as_str).collect())
        .collect()
}

fn invalid(result: Result<Plan>) -> String {
    match result {
        Err(DefinitionError::Invalid(msg)) => msg,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Every stage once; level 0 without dependencies, else exactly one
/// level after its latest dependency; definition order within a level.
fn check_plan(def: &Definition, plan: &Plan) {
    let mut level_of = HashMap::new();
    for (l, names) in plan.levels.iter().enumerate() {
        assert!(!names.is_empty(), "level {l} is empty");
        for name in names {
            assert!(level_of.insert(name.as_str(), l).is_none(), "{name} twice");
        }
    }
    assert_eq!(level_of.len(), def.stages.len(), "stages missing");
    for s in &def.stages {
        let l = level_of[s.name.as_str()];
        for d in &s.depends_on {
            assert!(level_of[d.as_str()] < l, "{} not after {d}", s.name);
        }
        let want = s
            .depends_on
            .iter()
            .map(|d| level_of[d.as_str()] + 1)
            .max()
            .unwrap_or(0);
        assert_eq!(l, want, "level of {}", s.name);
    }
    let position: HashMap<&str, usize> = def
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for names in &plan.levels {
        assert!(
            names
                .windows(2)
                .all(|w| position[w[0].as_str()] < position[w[1].as_str()])
        );
    }
}

/// A reported cycle is closed, made of real `depends_on` edges, and
/// visits no stage twice.
fn check_cycle(def: &Definition, cycle: &[String]) {
    assert!(cycle.len() >= 3, "{cycle:?}");
    assert_eq!(cycle.first(), cycle.last());
    let inner: HashSet<_> = cycle[1..].iter().collect();
    assert_eq!(inner.len(), cycle.len() - 1, "{cycle:?} repeats a stage");
    for w in cycle.windows(2) {
        let next = def.stage(&w[1]).unwrap();
        assert!(
            next.depends_on.contains(&w[0]),
            "{} -> {} is no edge",
            w[0],
            w[1]
        );
    }
}

const YAML: &str = r#"
name: release
version: 2
description: Build and ship.
stages:
  - name: build
    agent: builder
    timeout: 90s
    max_attempts: 5
  - name: ship
    agent: deployment
    depends_on: [build]
    timeout: 1h 30m
    approval: true
    compensate:
      agent: rollback
      input: { action: rollback, keep: 2 }
"#;

const JSON: &str = r#"{
  "name": "release",
  "version": 2,
  "description": "Build and ship.",
  "stages": [
    {"name": "build", "agent": "builder", "timeout": "90s", "max_attempts": 5},
    {"name": "ship", "agent": "deployment", "depends_on": ["build"], "timeout": "1h 30m",
     "approval": true,
     "compensate": {"agent": "rollback", "input": {"action": "rollback", "keep": 2}}}
  ]
}"#;

#[test]
fn approval_timeouts_need_an_approval_and_a_sane_length() {
    let yaml = |extra: &str| format!("name: d\nstages:\n  - name: a\n    agent: x\n{extra}");
    let ok =
        Definition::from_yaml(&yaml("    approval: true\n    approval_timeout: 24h\n")).unwrap();
    ok.validate().unwrap();
    assert_eq!(
        ok.stages[0].approval_timeout,
        Some(Duration::from_secs(24 * 3600))
    );
    let m = invalid(
        Definition::from_yaml(&yaml("    approval_timeout: 1h\n"))
            .unwrap()
            .validate(),
    );
    assert!(m.contains("\"a\"") && m.contains("approval: true"), "{m}");
    let m = invalid(
        Definition::from_yaml(&yaml("    approval: true\n    approval_timeout: 10ms\n"))
            .unwrap()
            .validate(),
    );
    assert!(m.contains("approval_timeout"), "{m}");
}

#[test]
fn yaml_and_json_parse_equal() {
    let yaml = Definition::from_yaml(YAML).unwrap();
    let json = Definition::from_json(JSON).unwrap();
    assert_eq!(yaml, json);
    assert_eq!(Definition::parse(YAML).unwrap(), yaml);
    assert_eq!(Definition::parse(JSON).unwrap(), yaml);
    let ship = yaml.stage("ship").unwrap();
    assert_eq!(ship.timeout, Some(Duration::from_secs(5400)));
    assert!(ship.approval);
    assert_eq!(
        ship.compensate.as_ref().unwrap().input,
        json!({"action": "rollback", "keep": 2})
    );
    assert!(yaml.stage("nope").is_none());
    assert_eq!(levels(&yaml.validate().unwrap()), [["build"], ["ship"]]);
}

#[test]
fn round_trips_through_yaml_and_json() {
    let sdlc = Definition::sdlc();
    let yaml = serde_norway::to_string(&sdlc).unwrap();
    let json = serde_json::to_string(&sdlc).unwrap();
    assert_eq!(Definition::parse(&yaml).unwrap(), sdlc);
    assert_eq!(Definition::parse(&json).unwrap(), sdlc);
}

#[test]
fn sdlc_plans_into_five_levels_of_one() {
    let sdlc = Definition::sdlc();
    assert_eq!((sdlc.name.as_str(), sdlc.version), ("sdlc", 1));
    let plan = sdlc.validate().unwrap();
    assert_eq!(
        levels(&plan),
        [
            ["scaffold"],
            ["validation"],
            ["e2e"],
            ["integration"],
            ["deployment"]
        ]
    );
    let minutes = |name: &str| sdlc.stage(name).unwrap().timeout.unwrap().as_secs() / 60;
    assert_eq!(
        ["scaffold", "validation", "e2e", "integration", "deployment"].map(minutes),
        [5, 5, 15, 5, 10]
    );
    for s in &sdlc.stages {
        assert_eq!(s.agent, s.name);
        assert_eq!(s.max_attempts, Some(3));
    }
    let deployment = sdlc.stage("deployment").unwrap();
    assert_eq!(
        deployment.compensate,
        Some(Compensation {
            agent: None,
            input: json!({"action": "rollback"})
        })
    );
    assert!(sdlc.stage("e2e").unwrap().compensate.is_none());
}

#[test]
fn diamond() {
    // Defined out of order: order within a level follows the definition.
    let d = def(vec![
        stage("d", &["c", "b"]),
        stage("c", &["a"]),
        stage("b", &["a"]),
        stage("a", &[]),
    ]);
    let plan = d.validate().unwrap();
    assert_eq!(levels(&plan), [vec!["a"], vec!["c", "b"], vec!["d"]]);
    let d = def(vec![
        stage("a", &[]),
        stage("b", &["a"]),
        stage("c", &["a"]),
        stage("d", &["b", "c"]),
    ]);
    assert_eq!(
        levels(&d.validate().unwrap()),
        [vec!["a"], vec!["b", "c"], vec!["d"]]
    );
}

#[test]
fn level_is_one_after_the_latest_dependency() {
    let d = def(vec![
        stage("a", &[]),
        stage("b", &["a"]),
        stage("c", &["b"]),
        stage("x", &[]),
        stage("y", &["a", "c"]),
    ]);
    let plan = d.validate().unwrap();
    assert_eq!(
        levels(&plan),
        [vec!["a", "x"], vec!["b"], vec!["c"], vec!["y"]]
    );
    check_plan(&d, &plan);
}

#[test]
fn bad_names() {
    let mut d = def(vec![stage("a", &[])]);
    d.name = "Bad Name".to_owned();
    let msg = invalid(d.validate());
    assert!(
        msg.contains("definition name") && msg.contains("Bad Name"),
        "{msg}"
    );

    for bad in ["", "Build", "a:b", "a b", &"x".repeat(65)] {
        let d = def(vec![stage("ok", &[]), stage(bad, &[])]);
        let msg = invalid(d.validate());
        assert!(msg.contains("stage name") && msg.contains("#2"), "{msg}");
        assert!(msg.contains(&format!("{:?}", bad)), "{msg}");
    }
    // Stage names follow the name rule, not the agent type's reserved words.
    assert!(def(vec![stage("count", &[])]).validate().is_ok());
    assert!(def(vec![stage(&"x".repeat(64), &[])]).validate().is_ok());
}

#[test]
fn bad_agents() {
    let mut s = stage("build", &[]);
    s.agent = "Builder".to_owned();
    let msg = invalid(def(vec![s]).validate());
    assert!(
        msg.contains("\"build\"") && msg.contains("agent type"),
        "{msg}"
    );

    let mut s = stage("build", &[]);
    s.agent = "streams".to_owned();
    let msg = invalid(def(vec![s]).validate());
    assert!(
        msg.contains("\"build\"") && msg.contains("reserved"),
        "{msg}"
    );

    let mut s = stage("ship", &[]);
    s.compensate = Some(Compensation {
        agent: Some("roll back".to_owned()),
        input: serde_json::Value::Null,
    });
    let msg = invalid(def(vec![s]).validate());
    assert!(
        msg.contains("\"ship\"") && msg.contains("compensate"),
        "{msg}"
    );
}

#[test]
fn no_stages() {
    let msg = invalid(def(vec![]).validate());
    assert!(msg.contains("no stages") && msg.contains("test"), "{msg}");
}

#[test]
fn duplicate_stage() {
    let d = def(vec![stage("a", &[]), stage("b", &[]), stage("a", &[])]);
    assert_eq!(
        d.validate(),
        Err(DefinitionError::DuplicateStage("a".to_owned()))
    );
}

#[test]
fn unknown_dependency() {
    let d = def(vec![stage("a", &[]), stage("b", &["a", "ghost"])]);
    let err = d.validate().unwrap_err();
    assert_eq!(
        err,
        DefinitionError::UnknownDependency {
            stage: "b".to_owned(),
            missing: "ghost".to_owned()
        }
    );
    assert!(err.to_string().contains("\"b\""));
}

#[test]
fn self_dependency() {
    let msg = invalid(def(vec![stage("a", &[]), stage("b", &["a", "b"])]).validate());
    assert!(msg.contains("\"b\"") && msg.contains("itself"), "{msg}");
}

#[test]
fn repeated_dependency() {
    let msg = invalid(def(vec![stage("a", &[]), stage("b", &["a", "a"])]).validate());
    assert!(
        msg.contains("\"b\"") && msg.contains("\"a\" more than once"),
        "{msg}"
    );
}

#[test]
fn cycle_is_listed_in_order() {
    let d = def(vec![
        stage("start", &[]),
        stage("a", &["start", "c"]),
        stage("b", &["a"]),
        stage("c", &["b"]),
        stage("end", &["c"]),
    ]);
    let err = d.validate().unwrap_err();
    assert_eq!(err.to_string(), "stages form a cycle: a -> b -> c -> a");
    let DefinitionError::Cycle { cycle } = err else {
        panic!("{err:?}")
    };
    check_cycle(&d, &cycle);

    // Two stages waiting for each other.
    let d = def(vec![stage("x", &["y"]), stage("y", &["x"])]);
    assert_eq!(
        d.validate().unwrap_err().to_string(),
        "stages form a cycle: x -> y -> x"
    );
}

#[test]
fn max_attempts_range() {
    for (n, ok) in [(0, false), (1, true), (100, true), (101, false)] {
        let mut s = stage("build", &[]);
        s.max_attempts = Some(n);
        let result = def(vec![s]).validate();
        if ok {
            assert!(result.is_ok(), "{n}");
        } else {
            let msg = invalid(result);
            assert!(
                msg.contains("\"build\"") && msg.contains("max_attempts"),
                "{msg}"
            );
        }
    }
}

#[test]
fn timeout_range() {
    let day = 24 * 3600;
    for (secs, ok) in [
        (0.0, false),
        (0.5, false),
        (1.0, true),
        (7.0 * day as f64, true),
        (7.0 * day as f64 + 1.0, false),
    ] {
        let mut s = stage("build", &[]);
        s.timeout = Some(Duration::from_secs_f64(secs));
        let result = def(vec![s]).validate();
        if ok {
            assert!(result.is_ok(), "{secs}");
        } else {
            let msg = invalid(result);
            assert!(
                msg.contains("\"build\"") && msg.contains("timeout"),
                "{msg}"
            );
        }
    }
}

#[test]
fn compensation_input_is_an_object_or_null() {
    for (input, ok) in [
        (json!(null), true),
        (json!({"action": "rollback"}), true),
        (json!(["rollback"]), false),
        (json!("rollback"), false),
        (json!(1), false),
    ] {
        let mut s = stage("ship", &[]);
        s.compensate = Some(Compensation { agent: None, input });
        let result = def(vec![s]).validate();
        if ok {
            assert!(result.is_ok());
        } else {
            let msg = invalid(result);
            assert!(
                msg.contains("\"ship\"") && msg.contains("compensate.input"),
                "{msg}"
            );
        }
    }
}

#[test]
fn unknown_fields_are_refused() {
    for text in [
        "name: x\nstages: []\nowner: me\n",
        "name: x\nstages:\n  - name: a\n    agent: a\n    retries: 3\n",
        "name: x\nstages:\n  - name: a\n    agent: a\n    compensate: { agent: a, with: 1 }\n",
        r#"{"name": "x", "stages": [{"name": "a", "agent": "a", "dependsOn": []}]}"#,
    ] {
        let err = Definition::parse(text).unwrap_err();
        assert!(
            matches!(&err, DefinitionError::Parse(m) if m.contains("unknown field")),
            "{err:?}"
        );
    }
}

#[test]
fn parse_errors_say_where() {
    let err =
        Definition::from_yaml("name: x\nstages:\n  - name: a\n    timeout: soon\n").unwrap_err();
    assert!(
        matches!(&err, DefinitionError::Parse(m) if m.contains("line") && m.contains("soon")),
        "{err:?}"
    );
    let err = Definition::parse("{\"name\": \"x\",\n \"stages\": [}").unwrap_err();
    assert!(
        matches!(&err, DefinitionError::Parse(m) if m.contains("line 2")),
        "{err:?}"
    );
}

#[test]
fn size_limits() {
    let mut text = String::from("name: x\nstages: []\n");
    text.push_str(&"#".repeat(MAX_DEFINITION_BYTES + 1 - text.len()));
    for parsed in [
        Definition::from_yaml(&text),
        Definition::from_json(&text),
        Definition::parse(&text),
    ] {
        let msg = match parsed {
            Err(DefinitionError::Invalid(msg)) => msg,
            other => panic!("{other:?}"),
        };
        assert!(msg.contains("262144") && msg.contains("256 KiB"), "{msg}");
    }

    let many = random_dag(MAX_STAGES + 1, 7);
    let msg = invalid(many.validate());
    assert!(
        msg.contains("257 stages, over the stage limit of 256"),
        "{msg}"
    );
    let json = serde_json::to_string(&many).unwrap();
    assert!(json.len() <= MAX_DEFINITION_BYTES);
    assert!(matches!(
        Definition::from_json(&json),
        Err(DefinitionError::Invalid(m)) if m.contains("stage limit of 256")
    ));
    let yaml = serde_norway::to_string(&many).unwrap();
    assert!(matches!(
        Definition::from_yaml(&yaml),
        Err(DefinitionError::Invalid(m)) if m.contains("stage limit of 256")
    ));
    let at_limit = random_dag(MAX_STAGES, 7);
    check_plan(&at_limit, &at_limit.validate().unwrap());
}

#[test]
fn json_nested_past_the_depth_limit_is_refused_before_parsing() {
    let deep = |levels: usize| {
        format!(
            r#"{{"name": "x", "stages": [{{"name": "a", "agent": "a", "compensate": {{"input": {{"k": {}1{}}}}}}}]}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    // Body levels: definition, stages, stage, compensate, input, then the array.
    let msg = match Definition::from_json(&deep(60)) {
        Err(DefinitionError::Invalid(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(msg.contains("depth limit of 64"), "{msg}");
    Definition::from_json(&deep(59)).unwrap();
}

#[test]
fn compensate_input_is_held_to_the_input_limits() {
    let with_input = |input: serde_json::Value| Definition {
        name: "x".into(),
        version: 0,
        description: None,
        stages: vec![StageDef {
            compensate: Some(Compensation { agent: None, input }),
            ..stage("a", &[])
        }],
    };
    let nested = |levels: usize| -> serde_json::Value {
        serde_json::from_str(&format!("{}1{}", "[".repeat(levels), "]".repeat(levels))).unwrap()
    };
    // An object of depth 62 (its field 61 deep) is the deepest accepted.
    with_input(serde_json::json!({ "k": nested(61) }))
        .validate()
        .unwrap();
    let msg = invalid(with_input(serde_json::json!({ "k": nested(62) })).validate());
    assert!(
        msg.contains("compensate.input") && msg.contains("depth limit of 62"),
        "{msg}"
    );
    let big = serde_json::json!({ "k": "x".repeat(agent_sdk::schemas::limits::MAX_INPUT_BYTES) });
    let msg = invalid(with_input(big).validate());
    assert!(msg.contains("over the limit of 262144 bytes"), "{msg}");
}

#[test]
fn random_dag_of_a_thousand_stages() {
    for seed in [1, 0x9e37_79b9_7f4a_7c15, 42] {
        let d = random_dag(1000, seed);
        let plan = d.validate_within(1000).unwrap();
        check_plan(&d, &plan);
        assert!(plan.levels.len() > 1);
    }
}

/// Stage `i` depends on some of stages `0..i`; `order` shuffles them.
fn arb_dag() -> impl Strategy<Value = Definition> {
    (1..60usize).prop_flat_map(|n| {
        let deps =
            prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..4), n);
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        (deps, order).prop_map(move |(deps, order)| {
            let mut stages: Vec<StageDef> = deps
                .iter()
                .enumerate()
                .map(|(i, picks)| {
                    let mut depends_on = Vec::new();
                    if i > 0 {
                        for p in picks {
                            let d = format!("s{}", p.index(i));
                            if !depends_on.contains(&d) {
                                depends_on.push(d);
                            }
                        }
                    }
                    StageDef {
                        depends_on,
                        ..stage(&format!("s{i}"), &[])
                    }
                })
                .collect();
            let mut shuffled: Vec<Option<StageDef>> = stages.drain(..).map(Some).collect();
            def(order.iter().map(|&i| shuffled[i].take().unwrap()).collect())
        })
    })
}

/// Stages that `name` waits for, directly or not.
fn ancestors(def: &Definition, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![name.to_owned()];
    while let Some(n) = todo.pop() {
        for d in &def.stage(&n).unwrap().depends_on {
            if !found.contains(d) {
                found.push(d.clone());
                todo.push(d.clone());
            }
        }
    }
    found.sort();
    found
}

proptest! {
    #[test]
    fn random_dags_validate(d in arb_dag()) {
        let plan = d.validate().unwrap();
        check_plan(&d, &plan);
    }

    #[test]
    fn a_back_edge_makes_a_cycle(
        d in arb_dag(),
        pick_stage in any::<prop::sample::Index>(),
        pick_ancestor in any::<prop::sample::Index>(),
    ) {
        let waiting: Vec<&StageDef> =
            d.stages.iter().filter(|s| !s.depends_on.is_empty()).collect();
        prop_assume!(!waiting.is_empty());
        let late = pick_stage.get(&waiting).name.clone();
        let early = pick_ancestor.get(&ancestors(&d, &late)).clone();
        let mut d = d;
        let pos = d.stages.iter().position(|s| s.name == early).unwrap();
        d.stages[pos].depends_on.push(late.clone());
        match d.validate() {
            Err(DefinitionError::Cycle { cycle }) => {
                check_cycle(&d, &cycle);
                prop_assert!(cycle.contains(&late) && cycle.contains(&early));
            }
            other => prop_assert!(false, "{early} -> {late}: {other:?}"),
        }
    }
}

#[test]
fn yaml_scalars_keep_their_types() {
    // The API document says `name` and `description` are strings; YAML
    // read straight into the struct turned 123 and true into "123", "true".
    for text in [
        "name: 123\nstages:\n  - name: a\n    agent: a\n",
        "name: x\ndescription: true\nstages:\n  - name: a\n    agent: a\n",
        "name: x\nstages:\n  - name: a\n    agent: 7\n",
    ] {
        let err = Definition::from_yaml(text).unwrap_err();
        assert!(
            matches!(&err, DefinitionError::Parse(m) if m.contains("invalid type")),
            "{text}: {err:?}"
        );
    }
    assert!(Definition::from_yaml("name: x\nstages:\n  - name: a\n    agent: a\n").is_ok());
    // What a YAML 1.1 writer leaves unquoted as a string stays one.
    let def =
        Definition::from_yaml("name: x\ndescription: 8e+87\nstages:\n  - name: a\n    agent: a\n")
            .unwrap();
    assert_eq!(def.description.as_deref(), Some("8e+87"));
}

#[test]
fn durations_are_written_in_one_unit() {
    let def = Definition::from_yaml(
        "name: x\nstages:\n  - name: a\n    agent: a\n    timeout: 1h 30m\n  - name: b\n    agent: a\n    timeout: 1500ms\n    approval: true\n    approval_timeout: 2d\n",
    )
    .unwrap();
    let json = serde_json::to_value(&def).unwrap();
    assert_eq!(json["stages"][0]["timeout"], "90m");
    assert_eq!(json["stages"][1]["timeout"], "1500ms");
    assert_eq!(json["stages"][1]["approval_timeout"], "2d");
    // And read back as they were.
    assert_eq!(Definition::from_json(&json.to_string()).unwrap(), def);
}

#[test]
fn a_whole_number_with_a_fraction_is_an_integer() {
    let def = Definition::from_json(
        r#"{"name": "x", "version": 3.0, "stages": [{"name": "a", "agent": "a", "max_attempts": 2.0}]}"#,
    )
    .unwrap();
    assert_eq!((def.version, def.stages[0].max_attempts), (3, Some(2)));
    for bad in [
        r#""version": 2.5"#,
        r#""version": -1"#,
        r#""version": 4294967296"#,
    ] {
        let text = format!(r#"{{"name": "x", {bad}, "stages": [{{"name": "a", "agent": "a"}}]}}"#);
        assert!(Definition::from_json(&text).is_err(), "{bad}");
    }
}

#[test]
fn a_yaml_whole_number_beyond_64_bits_is_an_invalid_value_not_a_parse_error() {
    // Found by schemathesis: valid YAML (and valid JSON Schema), but no JSON
    // value holds it; the API answers 422 as for any refused value.
    for n in ["32589158477190044729", "-32589158477190044729"] {
        let text = format!(
            "name: big\nstages:\n  - name: a\n    agent: x\n    compensate:\n      input:\n        n: {n}\n"
        );
        match Definition::from_yaml(&text) {
            Err(DefinitionError::Invalid(m)) => assert!(m.contains("out of range"), "{m}"),
            other => panic!("{n}: {other:?}"),
        }
    }
}
