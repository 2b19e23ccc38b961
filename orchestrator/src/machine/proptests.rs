//! Properties of the state machine over random definitions and event sequences.

use super::tests::*;
use super::*;
use crate::definition::{Compensation, StageDef};
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashSet;

/// A random DAG of up to 6 stages; some need approval, some compensate.
fn arb_def() -> impl Strategy<Value = Definition> {
    (1usize..=6)
        .prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n),
                proptest::collection::vec(any::<(bool, bool)>(), n),
            )
        })
        .prop_map(|(n, edges, flags)| {
            let mut d = def(&[]);
            for i in 0..n {
                d.stages.push(StageDef {
                    name: format!("s{i}"),
                    agent: "a".into(),
                    depends_on: (0..i)
                        .filter(|&j| edges[i][j])
                        .map(|j| format!("s{j}"))
                        .collect(),
                    timeout: None,
                    max_attempts: None,
                    compensate: flags[i].1.then_some(Compensation {
                        agent: None,
                        input: Value::Null,
                    }),
                    approval: flags[i].0 && i % 2 == 1,
                    approval_timeout: None,
                });
            }
            d
        })
}

/// An abstract event: which kind, and a number to pick its target with.
#[derive(Debug, Clone)]
enum Pick {
    Start,
    Succeed(usize),
    Fail(usize),
    Dead(usize),
    Timeout(usize),
    Approve(usize),
    Reject(usize),
    Replay(usize),
    Abort,
    Cancel,
}

fn arb_pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        1 => Just(Pick::Start),
        8 => any::<usize>().prop_map(Pick::Succeed),
        1 => any::<usize>().prop_map(Pick::Fail),
        1 => any::<usize>().prop_map(Pick::Dead),
        1 => any::<usize>().prop_map(Pick::Timeout),
        2 => any::<usize>().prop_map(Pick::Approve),
        1 => any::<usize>().prop_map(Pick::Reject),
        2 => any::<usize>().prop_map(Pick::Replay),
        1 => Just(Pick::Abort),
        1 => Just(Pick::Cancel),
    ]
}

/// Turns a pick into an event. Results target any task ever dispatched
/// (so duplicates and stale ones happen), mostly the running ones.
fn event(r: &Run, p: &Pick) -> Event {
    let tasks: Vec<String> = r.dispatched.iter().map(|d| d.1.clone()).collect();
    let running: Vec<String> =
        r.wf.running_tasks()
            .into_iter()
            .map(str::to_owned)
            .collect();
    let pick_task = |k: usize| -> String {
        if !running.is_empty() && !k.is_multiple_of(4) {
            running[k % running.len()].clone()
        } else if !tasks.is_empty() {
            tasks[k % tasks.len()].clone()
        } else {
            "wf-1:none:1".into()
        }
    };
    let stage = |k: usize| r.wf.stages[k % r.wf.stages.len()].name.clone();
    match p {
        Pick::Start => Event::Started,
        Pick::Succeed(k) => Event::TaskSucceeded {
            task_id: pick_task(*k),
            output: json!(k % 7),
        },
        Pick::Fail(k) => Event::TaskFailed {
            task_id: pick_task(*k),
            error: "e".into(),
        },
        Pick::Dead(k) => Event::TaskDeadLettered {
            task_id: pick_task(*k),
            error: "d".into(),
        },
        Pick::Timeout(k) => Event::TaskTimedOut {
            task_id: pick_task(*k),
        },
        Pick::Approve(k) => Event::Approved { stage: stage(*k) },
        Pick::Reject(k) => Event::Rejected {
            stage: stage(*k),
            reason: "r".into(),
        },
        Pick::Replay(k) => Event::Replayed { stage: stage(*k) },
        Pick::Abort => Event::Aborted { reason: "a".into() },
        Pick::Cancel => Event::Cancelled { reason: "c".into() },
    }
}

/// What must hold after every step.
fn check_invariants(r: &Run) {
    let wf = &r.wf;
    let running = wf.stages.iter().any(|s| s.status == StageStatus::Running)
        || wf
            .stages
            .iter()
            .any(|s| matches!(s.compensation, Some(CompensationState::Running { .. })));
    let waiting = wf.stages.iter().any(|s| {
        matches!(
            s.status,
            StageStatus::AwaitingApproval | StageStatus::DeadLettered
        )
    });
    match wf.status {
        WorkflowStatus::Pending => assert!(r.dispatched.is_empty()),
        WorkflowStatus::Running | WorkflowStatus::Compensating => {
            assert!(running, "{:?} with nothing running: {wf:#?}", wf.status)
        }
        WorkflowStatus::AwaitingApproval => {
            assert!(!running);
            assert!(
                wf.stages
                    .iter()
                    .any(|s| s.status == StageStatus::AwaitingApproval),
                "{wf:#?}"
            );
        }
        WorkflowStatus::Blocked => assert!(
            wf.stages
                .iter()
                .any(|s| s.status == StageStatus::DeadLettered)
        ),
        WorkflowStatus::Completed => {
            assert!(wf.stages.iter().all(|s| s.status == StageStatus::Completed));
            assert_eq!(wf.progress(), 100);
        }
        WorkflowStatus::Failed | WorkflowStatus::Cancelled => {
            assert!(!running, "ended with work out: {wf:#?}");
            assert!(wf.ending.is_some());
            for (i, st) in wf.stages.iter().enumerate() {
                if st.status == StageStatus::Completed && r.def.stages[i].compensate.is_some() {
                    assert!(
                        st.compensation.is_some(),
                        "{} was never undone: {wf:#?}",
                        st.name
                    );
                }
            }
        }
    }
    // Undoing starts only once every running stage has finished: one
    // finishing later would have needed undoing first.
    if wf
        .stages
        .iter()
        .any(|s| matches!(s.compensation, Some(CompensationState::Running { .. })))
    {
        assert!(
            wf.stages.iter().all(|s| s.status != StageStatus::Running),
            "a compensation runs next to a running stage: {wf:#?}"
        );
    }
    // Nothing is left hanging: not ended means something runs or waits.
    if !wf.status.is_terminal() && wf.status != WorkflowStatus::Pending {
        assert!(running || waiting, "stuck: {wf:#?}");
    }
    // Dependencies are honoured.
    for (i, s) in wf.stages.iter().enumerate() {
        if matches!(
            s.status,
            StageStatus::Running | StageStatus::Completed | StageStatus::AwaitingApproval
        ) && s.dispatches > 0
            || s.status == StageStatus::AwaitingApproval
        {
            for d in &r.def.stages[i].depends_on {
                assert_eq!(
                    wf.stage(d).unwrap().status,
                    StageStatus::Completed,
                    "{} started before {d}",
                    s.name
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_event_sequence_breaks_the_rules(d in arb_def(), picks in proptest::collection::vec(arb_pick(), 0..60)) {
        let mut r = Run::new(d);
        let mut completed_once: HashSet<String> = HashSet::new();
        let mut undone_once: HashSet<String> = HashSet::new();
        let mut first_undo: Option<HashSet<String>> = None;
        for p in &picks {
            let before = r.wf.clone();
            let e = event(&r, p);
            let changed = r.apply(e);
            if first_undo.is_none() && r.dispatched.iter().any(|d| d.2) {
                first_undo = Some(
                    before.stages.iter().filter(|s| s.status == StageStatus::Completed).map(|s| s.name.clone())
                        .chain(r.wf.stages.iter().filter(|s| s.status == StageStatus::Completed).map(|s| s.name.clone()))
                        .collect(),
                );
            }
            if before.status.is_terminal() {
                prop_assert!(!changed, "a terminal workflow changed");
            }
            for (b, a) in before.stages.iter().zip(&r.wf.stages) {
                if b.status != StageStatus::Completed && a.status == StageStatus::Completed {
                    prop_assert!(completed_once.insert(a.name.clone()), "stage {} completed twice", a.name);
                }
                if b.compensation != Some(CompensationState::Done) && a.compensation == Some(CompensationState::Done) {
                    prop_assert!(undone_once.insert(a.name.clone()), "stage {} undone twice", a.name);
                }
            }
            check_invariants(&r);
        }
        // Compensations go out in reverse order of completion, among the
        // stages completed when compensating began. (A dead-lettered
        // stage replayed from outside can still complete later; it is
        // undone then, after the others.)
        let seqs: Vec<u32> = r
            .dispatched
            .iter()
            .filter(|d| d.2 && first_undo.as_ref().is_some_and(|done| done.contains(&d.0)))
            .map(|d| r.wf.stage(&d.0).and_then(|s| s.completed_seq).unwrap_or(0))
            .collect();
        prop_assert!(seqs.windows(2).all(|w| w[0] > w[1]), "compensations out of order: {:?}", seqs);
        let ids: HashSet<_> = r.dispatched.iter().map(|d| &d.1).collect();
        prop_assert_eq!(ids.len(), r.dispatched.len(), "a task id was dispatched twice");
    }

    #[test]
    fn answering_every_task_with_success_completes(d in arb_def()) {
        let mut r = Run::new(d);
        r.apply(Event::Started);
        for _ in 0..100 {
            let running: Vec<String> = r.wf.running_tasks().into_iter().map(str::to_owned).collect();
            let waiting: Vec<String> = r.wf.stages.iter().filter(|s| s.status == StageStatus::AwaitingApproval).map(|s| s.name.clone()).collect();
            if running.is_empty() && waiting.is_empty() {
                break;
            }
            for t in running {
                r.apply(Event::TaskSucceeded { task_id: t, output: json!(true) });
            }
            for s in waiting {
                r.apply(Event::Approved { stage: s });
            }
            check_invariants(&r);
        }
        prop_assert_eq!(r.wf.status, WorkflowStatus::Completed);
        prop_assert_eq!(r.dispatched.len(), r.wf.stages.len(), "each stage dispatched once");
    }
}
