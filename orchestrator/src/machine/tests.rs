//! Scenario tests of the state machine: one behaviour each, as a pure function.

use super::*;
use crate::definition::{Compensation, StageDef};
use serde_json::json;
use std::collections::HashMap;

/// A definition from `(name, depends_on, approval, compensated)`.
pub(super) fn def(stages: &[(&str, &[&str], bool, bool)]) -> Definition {
    Definition {
        name: "test".into(),
        version: 1,
        description: None,
        stages: stages
            .iter()
            .map(|(name, deps, approval, comp)| StageDef {
                name: (*name).into(),
                agent: format!("agent-{name}"),
                depends_on: deps.iter().map(|d| (*d).into()).collect(),
                timeout: Some(Duration::from_secs(60)),
                max_attempts: Some(3),
                compensate: comp.then(|| Compensation {
                    agent: None,
                    input: json!({"action": "rollback"}),
                }),
                approval: *approval,
                approval_timeout: None,
            })
            .collect(),
    }
}

pub(super) fn chain(n: usize, compensated: &[usize]) -> Definition {
    let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let mut d = def(&[]);
    for i in 0..n {
        d.stages.push(StageDef {
            name: names[i].clone(),
            agent: format!("agent-{i}"),
            depends_on: if i == 0 {
                vec![]
            } else {
                vec![names[i - 1].clone()]
            },
            timeout: Some(Duration::from_secs(60)),
            max_attempts: None,
            compensate: compensated.contains(&i).then(|| Compensation {
                agent: None,
                input: json!({"action": "rollback"}),
            }),
            approval: false,
            approval_timeout: None,
        });
    }
    d
}

/// Drives a workflow: applies events, remembers every dispatched task.
pub(super) struct Run {
    pub(super) def: Definition,
    pub(super) wf: Workflow,
    pub(super) now: u64,
    pub(super) dispatched: Vec<(String, String, bool)>, // (stage, task id, compensation)
    pub(super) inputs: HashMap<String, Value>,
}

impl Run {
    pub(super) fn new(def: Definition) -> Self {
        let wf = Workflow::new("wf-1", &def, json!({"project": "demo"}), 0);
        Self {
            def,
            wf,
            now: 0,
            dispatched: Vec::new(),
            inputs: HashMap::new(),
        }
    }

    pub(super) fn apply(&mut self, e: Event) -> bool {
        self.now += 1;
        match apply(&self.wf, &self.def, &e, self.now) {
            Some((wf, cmds)) => {
                for c in cmds {
                    if let Command::Dispatch {
                        stage,
                        task_id,
                        input,
                        compensation,
                        ..
                    } = c
                    {
                        self.inputs.insert(task_id.clone(), input);
                        self.dispatched.push((stage, task_id, compensation));
                    }
                }
                self.wf = wf;
                true
            }
            None => false,
        }
    }

    pub(super) fn task_of(&self, stage: &str) -> String {
        self.wf
            .stage(stage)
            .and_then(|s| s.task_id.clone())
            .expect("stage has a task")
    }

    pub(super) fn succeed(&mut self, stage: &str) -> bool {
        let task_id = self.task_of(stage);
        self.apply(Event::TaskSucceeded {
            task_id,
            output: json!({ "from": stage }),
        })
    }

    pub(super) fn undo_task(&self, stage: &str) -> String {
        match &self.wf.stage(stage).unwrap().compensation {
            Some(CompensationState::Running { task_id }) => task_id.clone(),
            other => panic!("{stage} is not being compensated: {other:?}"),
        }
    }
}

#[test]
fn a_chain_runs_stage_by_stage_to_completion() {
    let mut r = Run::new(chain(5, &[]));
    assert_eq!(r.wf.status, WorkflowStatus::Pending);
    assert!(r.apply(Event::Started));
    for i in 0..5 {
        assert_eq!(r.wf.status, WorkflowStatus::Running);
        assert_eq!(r.dispatched.len(), i + 1, "one stage at a time");
        assert_eq!(r.wf.progress() as usize, i * 20);
        assert!(r.succeed(&format!("s{i}")));
    }
    assert_eq!(r.wf.status, WorkflowStatus::Completed);
    assert_eq!(r.wf.progress(), 100);
    for s in &r.wf.stages {
        assert_eq!(s.output, Some(json!({ "from": s.name })));
    }
    // A stage's input carries the workflow input and its dependencies' outputs.
    let last = &r.inputs[&r.task_of("s4")];
    assert_eq!(last["input"], json!({"project": "demo"}));
    assert_eq!(last["deps"], json!({"s3": {"from": "s3"}}));
    assert_eq!(last["stage"], "s4");
    // After the end nothing changes.
    assert!(!r.apply(Event::Cancelled {
        reason: "late".into()
    }));
}

#[test]
fn sdlc_completes_and_a_failure_at_e2e_never_deploys() {
    let sdlc = Definition::sdlc();
    sdlc.validate().unwrap();
    let mut r = Run::new(sdlc.clone());
    r.apply(Event::Started);
    for s in ["scaffold", "validation", "e2e", "integration", "deployment"] {
        r.succeed(s);
    }
    assert_eq!(r.wf.status, WorkflowStatus::Completed);

    let mut r = Run::new(sdlc);
    r.apply(Event::Started);
    r.succeed("scaffold");
    r.succeed("validation");
    let e2e = r.task_of("e2e");
    r.apply(Event::TaskFailed {
        task_id: e2e,
        error: "2 tests failed".into(),
    });
    // Only deployment has a compensation, and it never ran: nothing to undo.
    assert_eq!(r.wf.status, WorkflowStatus::Failed);
    assert_eq!(
        r.wf.stage("deployment").unwrap().status,
        StageStatus::Skipped
    );
    assert!(r.dispatched.iter().all(|d| d.0 != "deployment"));
}

#[test]
fn independent_stages_run_in_parallel() {
    let mut r = Run::new(def(&[
        ("a", &[], false, false),
        ("b", &["a"], false, false),
        ("c", &["a"], false, false),
        ("d", &["b", "c"], false, false),
    ]));
    r.apply(Event::Started);
    r.succeed("a");
    let running: Vec<_> =
        r.wf.stages
            .iter()
            .filter(|s| s.status == StageStatus::Running)
            .map(|s| s.name.as_str())
            .collect();
    assert_eq!(running, ["b", "c"], "b and c go out in the same transition");
    r.succeed("c");
    assert_eq!(
        r.wf.stage("d").unwrap().status,
        StageStatus::Pending,
        "d waits for b too"
    );
    r.succeed("b");
    let d_input = r.inputs[&r.task_of("d")].clone();
    assert_eq!(
        d_input["deps"],
        json!({"b": {"from": "b"}, "c": {"from": "c"}})
    );
    r.succeed("d");
    assert_eq!(r.wf.status, WorkflowStatus::Completed);
}

#[test]
fn a_refused_dispatch_fails_its_stage_like_a_permanent_failure() {
    let mut r = Run::new(chain(3, &[0]));
    r.apply(Event::Started);
    r.succeed("s0");
    let t1 = r.task_of("s1");
    assert!(r.apply(Event::DispatchFailed {
        task_id: t1.clone(),
        error: "over the limit of 1048576 bytes".into()
    }));
    let s1 = r.wf.stage("s1").unwrap();
    assert_eq!(s1.status, StageStatus::Failed);
    assert!(s1.error.as_deref().unwrap().contains("1048576"));
    assert_eq!(r.wf.stage("s2").unwrap().status, StageStatus::Skipped);
    // s0 completed: it is undone, then the workflow fails.
    let undo0 = r.undo_task("s0");
    assert!(r.apply(Event::TaskSucceeded {
        task_id: undo0,
        output: json!(null)
    }));
    assert_eq!(r.wf.status, WorkflowStatus::Failed);
    // A second refusal of the same task changes nothing.
    assert!(!r.apply(Event::DispatchFailed {
        task_id: t1,
        error: "again".into()
    }));
}

#[test]
fn a_permanent_failure_compensates_in_reverse_and_fails() {
    let mut r = Run::new(chain(5, &[0, 1, 3]));
    r.apply(Event::Started);
    r.succeed("s0");
    r.succeed("s1");
    let t2 = r.task_of("s2");
    assert!(r.apply(Event::TaskFailed {
        task_id: t2,
        error: "tests failed".into()
    }));
    assert_eq!(r.wf.status, WorkflowStatus::Compensating);
    for later in ["s3", "s4"] {
        assert_eq!(
            r.wf.stage(later).unwrap().status,
            StageStatus::Skipped,
            "{later} never runs"
        );
    }
    // s1 is undone first, then s0; one at a time.
    let undo1 = r.undo_task("s1");
    assert!(r.wf.stage("s0").unwrap().compensation.is_none());
    let input = &r.inputs[&undo1];
    assert_eq!(input["action"], "rollback");
    assert_eq!(input["output"], json!({"from": "s1"}));
    assert!(r.apply(Event::TaskSucceeded {
        task_id: undo1,
        output: json!(null)
    }));
    let undo0 = r.undo_task("s0");
    assert!(r.apply(Event::TaskSucceeded {
        task_id: undo0,
        output: json!(null)
    }));
    assert_eq!(r.wf.status, WorkflowStatus::Failed);
    let order: Vec<_> = r
        .dispatched
        .iter()
        .filter(|d| d.2)
        .map(|d| d.0.as_str())
        .collect();
    assert_eq!(order, ["s1", "s0"]);
    assert!(matches!(&r.wf.ending, Some(Ending::Failed { reason }) if reason.contains("s2")));
}

#[test]
fn a_failure_waits_for_running_branches_before_compensating() {
    let mut r = Run::new(def(&[
        ("a", &[], false, true),
        ("b", &["a"], false, true),
        ("c", &["a"], false, false),
    ]));
    r.apply(Event::Started);
    r.succeed("a");
    let tc = r.task_of("c");
    r.apply(Event::TaskFailed {
        task_id: tc,
        error: "no".into(),
    });
    assert_eq!(r.wf.status, WorkflowStatus::Compensating);
    assert!(
        r.dispatched.iter().all(|d| !d.2),
        "b still runs: nothing is undone yet"
    );
    r.succeed("b");
    // b completed after all, so it is undone first, then a.
    let ub = r.undo_task("b");
    r.apply(Event::TaskSucceeded {
        task_id: ub,
        output: json!(null),
    });
    let ua = r.undo_task("a");
    r.apply(Event::TaskFailed {
        task_id: ua,
        error: "rollback broke".into(),
    });
    assert_eq!(r.wf.status, WorkflowStatus::Failed);
    assert!(matches!(
        r.wf.stage("a").unwrap().compensation,
        Some(CompensationState::Failed { .. })
    ));
}

#[test]
fn a_dead_letter_blocks_until_replayed() {
    let mut r = Run::new(chain(3, &[]));
    r.apply(Event::Started);
    r.succeed("s0");
    let t1 = r.task_of("s1");
    r.apply(Event::TaskDeadLettered {
        task_id: t1.clone(),
        error: "attempts exhausted".into(),
    });
    assert_eq!(r.wf.status, WorkflowStatus::Blocked);
    assert!(
        !r.apply(Event::TaskTimedOut {
            task_id: t1.clone()
        }),
        "a blocked stage waits for a person, not a clock"
    );
    assert!(r.apply(Event::Replayed { stage: "s1".into() }));
    assert_eq!(r.wf.status, WorkflowStatus::Running);
    assert_eq!(
        r.task_of("s1"),
        t1,
        "the replayed dead letter keeps its task id"
    );
    r.succeed("s1");
    r.succeed("s2");
    assert_eq!(r.wf.status, WorkflowStatus::Completed);
}

#[test]
fn a_result_of_a_dead_letter_replayed_elsewhere_resumes_the_workflow() {
    let mut r = Run::new(chain(2, &[]));
    r.apply(Event::Started);
    let t0 = r.task_of("s0");
    r.apply(Event::TaskDeadLettered {
        task_id: t0,
        error: "x".into(),
    });
    assert!(r.succeed("s0"));
    assert_eq!(r.wf.stage("s1").unwrap().status, StageStatus::Running);
}

#[test]
fn aborting_a_blocked_workflow_compensates() {
    let mut r = Run::new(chain(3, &[0]));
    r.apply(Event::Started);
    r.succeed("s0");
    let t1 = r.task_of("s1");
    r.apply(Event::TaskDeadLettered {
        task_id: t1,
        error: "x".into(),
    });
    assert!(r.apply(Event::Aborted {
        reason: "operator".into()
    }));
    let u0 = r.undo_task("s0");
    r.apply(Event::TaskSucceeded {
        task_id: u0,
        output: json!(null),
    });
    assert_eq!(r.wf.status, WorkflowStatus::Failed);
    assert!(!r.apply(Event::Replayed { stage: "s1".into() }));
}

#[test]
fn approvals_gate_a_stage() {
    let d = def(&[
        ("build", &[], false, true),
        ("ship", &["build"], true, false),
    ]);
    let mut r = Run::new(d.clone());
    r.apply(Event::Started);
    assert!(
        !r.apply(Event::Approved {
            stage: "ship".into()
        }),
        "not waiting yet"
    );
    r.succeed("build");
    assert_eq!(r.wf.status, WorkflowStatus::AwaitingApproval);
    assert_eq!(r.dispatched.len(), 1);
    assert!(r.apply(Event::Approved {
        stage: "ship".into()
    }));
    assert!(
        !r.apply(Event::Approved {
            stage: "ship".into()
        }),
        "approving twice changes nothing"
    );
    r.succeed("ship");
    assert_eq!(r.wf.status, WorkflowStatus::Completed);

    let mut r = Run::new(d);
    r.apply(Event::Started);
    r.succeed("build");
    assert!(r.apply(Event::Rejected {
        stage: "ship".into(),
        reason: "not today".into()
    }));
    let u = r.undo_task("build");
    r.apply(Event::TaskSucceeded {
        task_id: u,
        output: json!(null),
    });
    assert_eq!(r.wf.status, WorkflowStatus::Failed);
    assert!(
        r.wf.stage("ship")
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("not today")
    );
}

#[test]
fn approval_waits_are_durable_timers() {
    let mut d = def(&[
        ("build", &[], false, true),
        ("ship", &["build"], true, false),
    ]);
    d.stages[1].approval_timeout = Some(Duration::from_secs(60));
    let timer = agent_sdk::schemas::TaskId::approval("wf-1", "ship").to_string();
    let arms = |cmds: &[Command]| {
        cmds.iter()
            .any(|c| matches!(c, Command::ArmTimer { task_id, after } if *task_id == timer && after.as_secs() == 60))
    };
    let cancels = |cmds: &[Command]| {
        cmds.iter()
            .any(|c| matches!(c, Command::CancelTimer { task_id } if *task_id == timer))
    };
    let wf = Workflow::new("wf-1", &d, json!({}), 0);
    let (wf, _) = apply(&wf, &d, &Event::Started, 1).unwrap();
    let build = wf.stage("build").unwrap().task_id.clone().unwrap();
    let ok = Event::TaskSucceeded {
        task_id: build,
        output: json!(1),
    };
    let (waiting, cmds) = apply(&wf, &d, &ok, 2).unwrap();
    assert_eq!(waiting.status, WorkflowStatus::AwaitingApproval);
    assert!(arms(&cmds), "{cmds:?}");

    // Approved in time: the timer goes, the stage runs; a late firing changes nothing.
    let (approved, cmds) = apply(
        &waiting,
        &d,
        &Event::Approved {
            stage: "ship".into(),
        },
        3,
    )
    .unwrap();
    assert!(cancels(&cmds), "{cmds:?}");
    assert_eq!(approved.stage("ship").unwrap().status, StageStatus::Running);
    assert!(
        apply(
            &approved,
            &d,
            &Event::TaskTimedOut {
                task_id: timer.clone()
            },
            4
        )
        .is_none()
    );

    // Not approved in time: the stage fails and the workflow with it.
    let (late, _) = apply(
        &waiting,
        &d,
        &Event::TaskTimedOut {
            task_id: timer.clone(),
        },
        5,
    )
    .unwrap();
    assert_eq!(late.stage("ship").unwrap().status, StageStatus::Failed);
    assert_eq!(
        late.stage("ship").unwrap().error.as_deref(),
        Some("approval timed out")
    );
    assert!(matches!(
        late.status,
        WorkflowStatus::Compensating | WorkflowStatus::Failed
    ));

    // Cancelled while waiting: the timer goes too.
    let (_, cmds) = apply(
        &waiting,
        &d,
        &Event::Cancelled {
            reason: "no".into(),
        },
        6,
    )
    .unwrap();
    assert!(cancels(&cmds), "{cmds:?}");
}

#[test]
fn cancel_waits_for_running_stages_then_compensates() {
    let mut r = Run::new(chain(3, &[0, 1]));
    r.apply(Event::Started);
    r.succeed("s0");
    assert!(r.apply(Event::Cancelled {
        reason: "changed my mind".into()
    }));
    assert_eq!(r.wf.status, WorkflowStatus::Compensating);
    assert!(!r.apply(Event::Cancelled {
        reason: "again".into()
    }));
    r.succeed("s1");
    assert_eq!(r.wf.stage("s2").unwrap().status, StageStatus::Skipped);
    let u1 = r.undo_task("s1");
    r.apply(Event::TaskSucceeded {
        task_id: u1,
        output: json!(null),
    });
    let u0 = r.undo_task("s0");
    r.apply(Event::TaskSucceeded {
        task_id: u0,
        output: json!(null),
    });
    assert_eq!(r.wf.status, WorkflowStatus::Cancelled);
}

#[test]
fn cancelling_before_start_skips_everything() {
    let mut r = Run::new(chain(2, &[0]));
    assert!(r.apply(Event::Cancelled {
        reason: "never mind".into()
    }));
    assert_eq!(r.wf.status, WorkflowStatus::Cancelled);
    assert!(r.wf.stages.iter().all(|s| s.status == StageStatus::Skipped));
    assert!(r.dispatched.is_empty());
}

#[test]
fn duplicate_and_stale_results_change_nothing() {
    let mut r = Run::new(chain(2, &[]));
    r.apply(Event::Started);
    let t0 = r.task_of("s0");
    assert!(r.succeed("s0"));
    let before = r.wf.clone();
    assert!(
        !r.apply(Event::TaskSucceeded {
            task_id: t0.clone(),
            output: json!(1)
        }),
        "duplicate"
    );
    assert!(
        !r.apply(Event::TaskFailed {
            task_id: t0.clone(),
            error: "late".into()
        }),
        "stale"
    );
    assert!(!r.apply(Event::TaskTimedOut { task_id: t0 }), "stale timer");
    assert!(!r.apply(Event::TaskSucceeded {
        task_id: "wf-1:nope:1".into(),
        output: json!(1)
    }));
    assert_eq!(r.wf, before);
}

#[test]
fn a_timeout_fails_the_stage() {
    let mut r = Run::new(chain(2, &[]));
    r.apply(Event::Started);
    let t0 = r.task_of("s0");
    assert!(r.apply(Event::TaskTimedOut {
        task_id: t0.clone()
    }));
    assert_eq!(r.wf.status, WorkflowStatus::Failed);
    assert!(
        !r.apply(Event::TaskSucceeded {
            task_id: t0,
            output: json!(1)
        }),
        "too late"
    );
}

#[test]
fn a_failure_or_dead_letter_after_the_deadline_is_the_timeout() {
    // The default stage timeout is an hour; `now` is the Redis clock.
    let hour = DEFAULT_STAGE_TIMEOUT.as_millis() as u64;
    for late in [
        |t: String| Event::TaskDeadLettered {
            task_id: t,
            error: "timed out after 1h".into(),
        },
        |t: String| Event::TaskFailed {
            task_id: t,
            error: "gave up".into(),
        },
    ] {
        let mut r = Run::new(chain(2, &[0]));
        r.apply(Event::Started);
        let t0 = r.task_of("s0");
        assert!(r.apply(Event::TaskSucceeded {
            task_id: t0,
            output: json!(0)
        }));
        let t1 = r.task_of("s1");
        assert!(r.wf.stage("s1").unwrap().deadline_at_ms.is_some());
        r.now += hour; // the deadline passed, whether or not it fired
        assert!(r.apply(late(t1.clone())));
        let s1 = r.wf.stage("s1").unwrap();
        assert_eq!(s1.status, StageStatus::Failed, "{s1:?}");
        assert!(s1.error.as_deref().unwrap().starts_with("timed out"));
        // Failed and compensated, never blocked.
        assert_eq!(r.wf.status, WorkflowStatus::Compensating);
        let Some(CompensationState::Running { task_id: undo }) =
            r.wf.stage("s0").unwrap().compensation.clone()
        else {
            panic!("s0 is not being undone: {:?}", r.wf.stage("s0"));
        };
        assert!(r.apply(Event::TaskSucceeded {
            task_id: undo,
            output: json!(null)
        }));
        assert_eq!(r.wf.status, WorkflowStatus::Failed);
        // The deadline firing afterwards changes nothing.
        assert!(!r.apply(Event::TaskTimedOut { task_id: t1 }));
    }
}

#[test]
fn a_dead_letter_before_the_deadline_still_blocks() {
    let mut r = Run::new(chain(1, &[]));
    r.apply(Event::Started);
    let t0 = r.task_of("s0");
    assert!(r.apply(Event::TaskDeadLettered {
        task_id: t0.clone(),
        error: "retries used up".into()
    }));
    assert_eq!(r.wf.status, WorkflowStatus::Blocked);
    // A dead-lettered stage has no deadline: it waits for a person.
    r.now += DEFAULT_STAGE_TIMEOUT.as_millis() as u64;
    assert!(!r.apply(Event::TaskTimedOut { task_id: t0 }));
    assert_eq!(r.wf.status, WorkflowStatus::Blocked);
}

// ---- properties over random event sequences ----

#[test]
fn statuses_round_trip() {
    for s in WorkflowStatus::ALL {
        assert_eq!(WorkflowStatus::parse(s.as_str()), Some(s));
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            Value::String(s.as_str().into())
        );
    }
    assert_eq!(WorkflowStatus::parse("nope"), None);
}
