//! The safety mechanisms of the durable shell, each tested so that breaking
//! it on purpose fails a test:
//!
//! - an outbox is cleared only if no newer transition came in (a replica's
//!   late clear must not drop another replica's commands);
//! - carrying a dispatch out again never pushes its stage deadline back;
//! - the API's bearer token guards every route the document says it does,
//!   on the real binary with the token from its environment;
//! - a result whose transition Redis refuses stays pending, and is applied
//!   once the refusal is lifted.
//!
//! The crash windows are made certain with [`Tapped`], a real connection
//! that stops one script call on the wire: held before it is sent, or
//! swallowed after Redis answered (the caller dies with its reply in
//! flight). Everything else is a real `redis-server` and the real code.

use crate::common::*;
use agent_sdk::testing::TestRedis;
use orchestrator::Definition;
use orchestrator::catalog::Catalog;
use orchestrator::engine::Engine;
use orchestrator::machine::log::NewLogEntry;
use orchestrator::machine::{Command, Event, Workflow, WorkflowStatus, apply};
use orchestrator::store::Stored;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const PATIENCE: Duration = Duration::from_secs(60);

const TRANSITION_LUA: &str = include_str!("../../../orchestrator/src/scripts/transition.lua");
const CLEAR_OUTBOX_LUA: &str = include_str!("../../../orchestrator/src/scripts/clear_outbox.lua");

/// Where [`Tapped`] stops its script's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before it is sent, until [`Tapped::release`].
    Before,
    /// After Redis answered 1: the reply never comes back (the caller is
    /// stuck there until the test aborts it, like a process that died).
    After,
}

/// A real connection that stops calls of one script (by its SHA1, as
/// `EVALSHA` sends it, alone or in a pipeline) where the test says, and
/// passes everything else.
#[derive(Clone)]
struct Tapped {
    inner: MultiplexedConnection,
    sha: String,
    at: At,
    reached: Arc<Semaphore>,
    released: Arc<Semaphore>,
}

impl Tapped {
    async fn new(redis: &TestRedis, script: &str, at: At) -> Self {
        Self {
            inner: conn(redis).await,
            sha: redis::Script::new(script).get_hash().to_owned(),
            at,
            reached: Arc::new(Semaphore::new(0)),
            released: Arc::new(Semaphore::new(0)),
        }
    }

    /// Waits until a call of the script got to the tap.
    async fn reached(&self, what: &str) {
        tokio::time::timeout(PATIENCE, self.reached.acquire())
            .await
            .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for: {what}"))
            .unwrap()
            .forget();
    }

    /// Lets held calls (and every later one) through.
    fn release(&self) {
        self.released.close();
    }

    /// Where the tapped call is in `pipeline`, if it is there.
    fn tapped_in(&self, pipeline: &redis::Pipeline) -> Option<usize> {
        pipeline.cmd_iter().position(|c| self.is_tapped(c))
    }

    fn is_tapped(&self, cmd: &redis::Cmd) -> bool {
        let mut args = cmd.args_iter();
        matches!(
            (args.next(), args.next()),
            (Some(redis::Arg::Simple(c)), Some(redis::Arg::Simple(sha)))
                if c.eq_ignore_ascii_case(b"EVALSHA") && sha == self.sha.as_bytes()
        )
    }
}

impl ConnectionLike for Tapped {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let tapped = self.is_tapped(cmd);
            if tapped && self.at == At::Before {
                self.reached.add_permits(1);
                // Closed by `release`: the error means "go".
                let _ = self.released.acquire().await;
            }
            let reply = self.inner.req_packed_command(cmd).await;
            if tapped && self.at == At::After && matches!(reply, Ok(redis::Value::Int(1))) {
                self.reached.add_permits(1);
                std::future::pending::<()>().await;
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let tapped = self.tapped_in(pipeline);
            if tapped.is_some() && self.at == At::Before {
                self.reached.add_permits(1);
                let _ = self.released.acquire().await;
            }
            let replies = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let (Some(at), At::After, Ok(r)) = (tapped, self.at, &replies)
                && matches!(
                    at.checked_sub(offset).and_then(|i| r.get(i)),
                    Some(redis::Value::Int(1))
                )
            {
                self.reached.add_permits(1);
                std::future::pending::<()>().await;
            }
            replies
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// An orchestrator replica as a library: its own engine and SDK client.
async fn replica(redis: &TestRedis) -> Arc<Engine> {
    let client = agent_sdk::Client::connect(&redis.url(), NS).await.unwrap();
    Arc::new(Engine::new(client).0)
}

/// Parses `yaml` and registers it through the catalog.
async fn register(redis: &TestRedis, yaml: &str) -> Arc<Definition> {
    let mut c = conn(redis).await;
    let def = Definition::parse(yaml).unwrap();
    Catalog::new(keys()).register(&mut c, &def).await.unwrap().0
}

/// Stores the start of workflow `id` (version 1) as a replica does before
/// carrying it out; returns the commands left in its outbox.
async fn store_started(redis: &TestRedis, def: &Definition, id: &str) -> Vec<Command> {
    let mut c = conn(redis).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let fresh = Workflow::new(id, def, json!({}), now);
    let (started, commands) = apply(&fresh, def, &Event::Started, now).unwrap();
    store().index(&mut c, id, now).await.unwrap();
    let entry = NewLogEntry {
        kind: "started".into(),
        stage: None,
        event: json!({ "type": "started" }),
        dispatched: commands
            .iter()
            .filter_map(|c| match c {
                Command::Dispatch { stage, .. } => Some(stage.clone()),
                _ => None,
            })
            .collect(),
    };
    assert!(
        store()
            .save(&mut c, 0, &started, &commands, &entry)
            .await
            .unwrap(),
        "{id} existed already"
    );
    commands
}

async fn load(redis: &TestRedis, id: &str) -> Stored {
    let mut c = conn(redis).await;
    store().load(&mut c, id).await.unwrap().expect("workflow")
}

/// The Redis server's clock, in ms (the clock deadlines are armed by).
async fn redis_now_ms(c: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1000 + us / 1000
}

/// The deadline of `task` of agent type `agent`, by the Redis clock.
async fn deadline_of(redis: &TestRedis, agent: &str, task: &str) -> Option<u64> {
    let mut c = conn(redis).await;
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys().deadlines(&agent_type(agent)))
        .arg(task)
        .query_async(&mut c)
        .await
        .unwrap();
    score.map(|s| s as u64)
}

/// Task ids on `agent`'s task stream, oldest first.
async fn task_ids(redis: &TestRedis, agent: &str) -> Vec<String> {
    let mut c = conn(redis).await;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys().tasks(&agent_type(agent)))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|e| e.get::<String>("id").expect("task entry without an id"))
        .collect()
}

/// Task ids of the dispatches in `commands`, in order.
fn dispatched(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Dispatch { task_id, .. } => Some(task_id.clone()),
            _ => None,
        })
        .collect()
}

/// (type, stage) of each event-log entry.
async fn log_kinds(redis: &TestRedis, id: &str) -> Vec<(String, Option<String>)> {
    log(redis, id)
        .await
        .into_iter()
        .map(|e| (e.kind, e.stage))
        .collect()
}

fn kinds(v: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    v.iter()
        .map(|(k, s)| (k.to_string(), s.map(str::to_owned)))
        .collect()
}

/// `XPENDING` of the `orchestrator` group on `agent`'s results: (entry id,
/// times delivered) of each pending result.
async fn pending_results(redis: &TestRedis, agent: &str) -> Vec<(String, u64)> {
    let mut c = conn(redis).await;
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(keys().results(&agent_type(agent)))
        .arg("orchestrator")
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    rows.into_iter().map(|(id, _, _, n)| (id, n)).collect()
}

const RELAY: &str = r#"
name: relay
stages:
  - { name: build, agent: alpha }
  - { name: ship, agent: beta, depends_on: [build] }
"#;

/// Replica A stores a workflow's start and dispatches it; before its clear
/// of version 1 reaches Redis, replica B applies the first stage's result
/// (version 2, which appends the next dispatch to the outbox) and dies
/// before carrying anything out. A's clear then arrives: it must clear
/// nothing, and the sweeper must find and carry out B's dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_clear_of_an_older_version_leaves_a_newer_transitions_commands() {
    let redis = TestRedis::start();
    let def = register(&redis, RELAY).await;
    let id = "relay-1";
    let build = format!("{id}:build:1");
    let ship = format!("{id}:ship:1");

    // Replica A: stored v1, carries it out; its clear is held on the wire.
    let a = replica(&redis).await;
    let started = store_started(&redis, &def, id).await;
    assert_eq!(dispatched(&started), vec![build.clone()]);
    let a_conn = Tapped::new(&redis, CLEAR_OUTBOX_LUA, At::Before).await;
    let a_run = tokio::spawn({
        let (a, def, mut a_conn, started) = (a.clone(), def.clone(), a_conn.clone(), started);
        async move { a.carry_out(&mut a_conn, &def, id, 1, &started, None).await }
    });
    a_conn.reached("replica A's clear of version 1").await;
    assert_eq!(task_ids(&redis, "alpha").await, vec![build.clone()]);

    // Replica B: the build's result arrives there; v2 is stored (ship
    // decided) and B dies before carrying anything out.
    let b = replica(&redis).await;
    let b_conn = Tapped::new(&redis, TRANSITION_LUA, At::After).await;
    let b_run = tokio::spawn({
        let (b, mut b_conn, build) = (b.clone(), b_conn.clone(), build.clone());
        async move {
            let event = Event::TaskSucceeded {
                task_id: build,
                output: json!({ "built": true }),
            };
            b.signal(&mut b_conn, id, &event).await
        }
    });
    b_conn
        .reached("replica B's transition to version 2 stored")
        .await;
    b_run.abort();
    assert!(b_run.await.unwrap_err().is_cancelled());
    let stored = load(&redis, id).await;
    assert_eq!(stored.version, 2);
    assert_eq!(
        dispatched(&stored.outbox),
        vec![build.clone(), ship.clone()]
    );

    // A's clear of v1 arrives now: it must leave v2's commands alone.
    a_conn.release();
    let cleared = tokio::time::timeout(PATIENCE, a_run)
        .await
        .expect("replica A's carry-out did not finish")
        .unwrap()
        .unwrap();
    assert!(
        !cleared,
        "a clear of version 1 reported clearing the outbox of version 2"
    );
    let stored = load(&redis, id).await;
    assert_eq!(stored.version, 2);
    assert!(
        dispatched(&stored.outbox).contains(&ship),
        "version 2's dispatch of ship was dropped from the outbox: {:?}",
        stored.outbox
    );
    assert!(stored.outbox_at_ms.is_some());
    assert!(task_ids(&redis, "beta").await.is_empty());

    // The sweeper (a third replica) carries it out, once.
    let sweeper = replica(&redis).await;
    let mut cm = ConnectionManager::new(redis::Client::open(redis.url()).unwrap())
        .await
        .unwrap();
    let resumed = orchestrator::loops::sweep::sweep_once(&sweeper, &mut cm, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(resumed, 1, "the sweep found no outbox to carry out");
    assert_eq!(task_ids(&redis, "beta").await, vec![ship.clone()]);
    assert_eq!(task_ids(&redis, "alpha").await, vec![build.clone()]);
    let stored = load(&redis, id).await;
    assert!(stored.outbox.is_empty(), "{:?}", stored.outbox);
    assert_eq!(stored.outbox_at_ms, None);
    assert_eq!(
        orchestrator::loops::sweep::sweep_once(&sweeper, &mut cm, Duration::ZERO)
            .await
            .unwrap(),
        0
    );

    // The workflow runs to its end: each task once, results all consumed.
    let agents = Agents::start(&redis, &["alpha", "beta"]);
    let o = InProcess::start(&redis, &[]).await;
    let ended = wait_ended(&redis, &[id.to_string()], PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);
    assert_eq!(ended[0].version, 3);
    assert_eq!(
        log_kinds(&redis, id).await,
        kinds(&[
            ("started", None),
            ("task_succeeded", Some("build")),
            ("task_succeeded", Some("ship")),
        ])
    );
    // build's task was on its stream all along (its result, which came
    // first to replica B, now comes again and changes nothing).
    wait_until("the agents ran both tasks", PATIENCE, || {
        let n = agents.lab.runs().len();
        async move { n >= 2 }
    })
    .await;
    let counts = agents.lab.ok_counts();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        vec![
            ((id.to_string(), "build".to_string()), 1),
            ((id.to_string(), "ship".to_string()), 1)
        ]
    );
    assert_eq!(agents.lab.runs().len(), 2);
    wait_until(
        "results consumed, deadlines cleared, nothing active",
        PATIENCE,
        || async {
            let mut left = deadlines(&redis, &["alpha", "beta"]).await;
            for t in ["alpha", "beta"] {
                left += xlen(&redis, &keys().results(&agent_type(t))).await;
                left += pending_results(&redis, t).await.len() as u64;
            }
            let mut c = conn(&redis).await;
            let active: u64 = redis::cmd("ZCARD")
                .arg(keys().workflows_active())
                .query_async(&mut c)
                .await
                .unwrap();
            left + active == 0
        },
    )
    .await;
    o.shutdown().await;
    agents.shutdown().await;
}

/// Outboxes pile up when transitions of one workflow follow each other
/// faster than their clears (two replicas taking turns on it). Replica B
/// stores version 2 over A's uncleared version 1 and carries it out, the
/// build's result is acknowledged (its deadline cleared), and B's clear is
/// still on the wire when replica A applies the next result over the piled
/// outbox. Carrying that out again must not bring back the deadline of the
/// build, whose result is settled: it would sit armed for the stage timeout
/// with nothing left to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piled_up_outbox_does_not_bring_back_a_settled_tasks_deadline() {
    let redis = TestRedis::start();
    let def = register(&redis, RELAY).await;
    let id = "relay-pile";
    let build = format!("{id}:build:1");
    let ship = format!("{id}:ship:1");
    let a = replica(&redis).await;
    let b = replica(&redis).await;

    // v1 carried out by a replica whose clear never lands (a stale version).
    let started = store_started(&redis, &def, id).await;
    let mut c = conn(&redis).await;
    assert!(
        !a.carry_out(&mut c, &def, id, 99, &started, None)
            .await
            .unwrap()
    );
    assert!(deadline_of(&redis, "alpha", &build).await.is_some());

    // Replica B applies the build's result; its clear of v2 is held.
    let b_conn = Tapped::new(&redis, CLEAR_OUTBOX_LUA, At::Before).await;
    let b_run = tokio::spawn({
        let (b, mut b_conn, build) = (b.clone(), b_conn.clone(), build.clone());
        async move {
            let event = Event::TaskSucceeded {
                task_id: build,
                output: json!({ "built": true }),
            };
            b.signal_result(&mut b_conn, id, &event).await
        }
    });
    b_conn.reached("replica B's clear of version 2").await;
    assert_eq!(task_ids(&redis, "beta").await, vec![ship.clone()]);
    let stored = load(&redis, id).await;
    assert_eq!(stored.version, 2);
    assert_eq!(
        dispatched(&stored.outbox),
        vec![build.clone(), ship.clone()]
    );
    // The build's result is acknowledged: ack_results.lua clears its deadline.
    let _: i64 = redis::cmd("ZREM")
        .arg(keys().deadlines(&agent_type("alpha")))
        .arg(&build)
        .query_async(&mut c)
        .await
        .unwrap();

    // Replica A applies the ship's result over the piled outbox.
    let event = Event::TaskSucceeded {
        task_id: ship.clone(),
        output: json!({ "shipped": true }),
    };
    let outcome = a.signal_result(&mut c, id, &event).await.unwrap();
    assert!(matches!(
        outcome,
        orchestrator::engine::Outcome::Applied { version: 3, .. }
    ));
    assert_eq!(
        deadline_of(&redis, "alpha", &build).await,
        None,
        "carrying the piled outbox out again armed the settled build's deadline again"
    );
    b_conn.release();
    let b_done = tokio::time::timeout(PATIENCE, b_run)
        .await
        .expect("replica B did not finish")
        .unwrap()
        .unwrap();
    assert!(matches!(
        b_done,
        orchestrator::engine::Outcome::Applied { version: 2, .. }
    ));

    // The end: completed, each task dispatched once, no outbox; the ship's
    // deadline goes with its result's acknowledgement, as the build's did.
    let stored = load(&redis, id).await;
    assert_eq!(stored.workflow.status, WorkflowStatus::Completed);
    assert!(stored.outbox.is_empty(), "{:?}", stored.outbox);
    assert_eq!(task_ids(&redis, "alpha").await, vec![build]);
    assert_eq!(task_ids(&redis, "beta").await, vec![ship.clone()]);
    let _: i64 = redis::cmd("ZREM")
        .arg(keys().deadlines(&agent_type("beta")))
        .arg(&ship)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(deadlines(&redis, &["alpha", "beta"]).await, 0);
}

const PATIENT: &str = r#"
name: patient
stages:
  - { name: wait, agent: sleeper, timeout: 60s }
"#;

/// A replica dispatches a stage (arming its deadline) and dies before
/// clearing the outbox; another carries the same outbox out again a
/// moment later, by the Redis clock. The deadline stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrying_a_dispatch_out_again_keeps_its_deadline() {
    let redis = TestRedis::start();
    let def = register(&redis, PATIENT).await;
    let id = "patient-1";
    let task = format!("{id}:wait:1");
    let mut c = conn(&redis).await;

    let a = replica(&redis).await;
    let started = store_started(&redis, &def, id).await;
    let a_conn = Tapped::new(&redis, CLEAR_OUTBOX_LUA, At::Before).await;
    let a_run = tokio::spawn({
        let (a, def, mut a_conn) = (a.clone(), def.clone(), a_conn.clone());
        async move { a.carry_out(&mut a_conn, &def, id, 1, &started, None).await }
    });
    a_conn.reached("replica A's clear after its dispatch").await;
    // A dies with the clear unsent: the outbox stays.
    a_run.abort();
    assert!(a_run.await.unwrap_err().is_cancelled());
    let first = deadline_of(&redis, "sleeper", &task)
        .await
        .expect("the dispatch armed no deadline");
    assert_eq!(task_ids(&redis, "sleeper").await, vec![task.clone()]);
    assert_eq!(
        dispatched(&load(&redis, id).await.outbox),
        vec![task.clone()]
    );

    // The deadline was armed at `first - 60s` by the Redis clock; carry the
    // outbox out again a quarter second after that.
    let armed_at = first - 60_000;
    wait_until(
        "250 ms on the Redis clock since the dispatch",
        PATIENCE,
        || {
            let mut c = c.clone();
            async move { redis_now_ms(&mut c).await >= armed_at + 250 }
        },
    )
    .await;
    let b = replica(&redis).await;
    assert!(
        b.resume(&mut c, id).await.unwrap(),
        "no outbox to carry out"
    );
    let again = deadline_of(&redis, "sleeper", &task).await;
    assert_eq!(
        again,
        Some(first),
        "carrying the dispatch out again moved its deadline by {:?} ms",
        again.map(|a| a as i64 - first as i64)
    );
    // Everything accounted for: one task, one deadline, outbox empty.
    assert_eq!(task_ids(&redis, "sleeper").await, vec![task.clone()]);
    assert_eq!(deadlines(&redis, &["sleeper"]).await, 1);
    let stored = load(&redis, id).await;
    assert!(stored.outbox.is_empty());
    assert_eq!(stored.version, 1);
    assert_eq!(stored.workflow.status, WorkflowStatus::Running);
    assert_eq!(
        stored.workflow.stage("wait").unwrap().task_id.as_deref(),
        Some(task.as_str())
    );
}

const HURRIED: &str = r#"
name: hurried
stages:
  - { name: wait, agent: sleeper, timeout: 6s }
"#;

/// How late, by the Redis clock, a deadline may be seen to have fired: the
/// timer loop's tick (50 ms), one transition, and this test's polling.
/// A deadline pushed back by the re-dispatch halfway would be 3 s late.
const FIRING_SLACK_MS: u64 = 1500;

/// The same crash as above, and the orchestrator that starts halfway
/// through the stage's 6 s carries the outbox out again (its start-up
/// sweep). The stage must time out at its first deadline, not 6 s after
/// the re-dispatch: seen failed between the first deadline and that plus
/// a small slack, both by the Redis clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_re_dispatched_halfway_times_out_at_its_first_deadline() {
    let redis = TestRedis::start();
    let def = register(&redis, HURRIED).await;
    let id = "hurried-1";
    let task = format!("{id}:wait:1");
    let mut c = conn(&redis).await;

    let a = replica(&redis).await;
    let started = store_started(&redis, &def, id).await;
    let a_conn = Tapped::new(&redis, CLEAR_OUTBOX_LUA, At::Before).await;
    let a_run = tokio::spawn({
        let (a, def, mut a_conn) = (a.clone(), def.clone(), a_conn.clone());
        async move { a.carry_out(&mut a_conn, &def, id, 1, &started, None).await }
    });
    a_conn.reached("replica A's clear after its dispatch").await;
    a_run.abort();
    assert!(a_run.await.unwrap_err().is_cancelled());
    let first = deadline_of(&redis, "sleeper", &task)
        .await
        .expect("the dispatch armed no deadline");
    let halfway = first - 3_000;

    wait_until(
        "halfway to the deadline on the Redis clock",
        PATIENCE,
        || {
            let mut c = c.clone();
            async move { redis_now_ms(&mut c).await >= halfway }
        },
    )
    .await;
    let o = InProcess::start(&redis, &[]).await;
    wait_until(
        "the start-up sweep carried the outbox out",
        PATIENCE,
        || {
            let redis = &redis;
            async move { load(redis, id).await.outbox.is_empty() }
        },
    )
    .await;
    let redispatched_by = redis_now_ms(&mut c).await;
    assert!(
        redispatched_by < first,
        "the re-dispatch came after the deadline ({redispatched_by} >= {first}): too late to test anything"
    );

    // Watch it end, bracketing the firing by the Redis clock: a status
    // read as running after `t1` means not fired at `t1`; one read as
    // failed before `t2` means fired by `t2`.
    let mut running_at = 0;
    let failed_by;
    let give_up = Instant::now() + PATIENCE;
    loop {
        let t1 = redis_now_ms(&mut c).await;
        let status = summaries(&redis, &[id.to_string()]).await[0]
            .as_ref()
            .unwrap()
            .status;
        let t2 = redis_now_ms(&mut c).await;
        match status {
            WorkflowStatus::Running => running_at = t1,
            WorkflowStatus::Failed => {
                failed_by = t2;
                break;
            }
            other => panic!("{id} became {other:?}"),
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {PATIENCE:?} waiting for: {id} to time out (first deadline {first}, Redis now {t2})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "deadline {first}; re-dispatched by {redispatched_by} ({} ms before it); \
         still running at {running_at}, failed by {failed_by} (+{} ms)",
        first - redispatched_by,
        failed_by.saturating_sub(first)
    );
    assert!(
        failed_by >= first,
        "fired before its deadline: failed by {failed_by}, deadline {first}"
    );
    assert!(
        failed_by <= first + FIRING_SLACK_MS,
        "seen failed {} ms after its first deadline {first} (allowed {FIRING_SLACK_MS} ms; \
         still running at {running_at}): the re-dispatch by {redispatched_by} pushed it back",
        failed_by - first,
    );

    // Accounted for: one task, timed out once, its deadline gone.
    assert_eq!(
        log_kinds(&redis, id).await,
        kinds(&[("started", None), ("task_timed_out", Some("wait"))])
    );
    let stored = load(&redis, id).await;
    assert_eq!(
        stored.workflow.stage("wait").unwrap().error.as_deref(),
        Some("timed out")
    );
    assert_eq!(task_ids(&redis, "sleeper").await, vec![task]);
    wait_until("the fired deadline removed", PATIENCE, || async {
        deadlines(&redis, &["sleeper"]).await == 0
    })
    .await;
    o.shutdown().await;
}

/// Every (method, path) of the served document and whether it declares the
/// bearer scheme.
fn operations(doc: &Value) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let bearer = op["security"]
                .as_array()
                .is_some_and(|reqs| reqs.iter().any(|r| r.get("bearer").is_some()));
            out.push((method.to_uppercase(), path.clone(), bearer));
        }
    }
    out
}

/// A concrete path for a templated one: every `{param}` becomes `x1`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str("x1");
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The real binary, its token in `AGENTIC_API_TOKEN` only: every `/api/v1`
/// operation its own document marks with the bearer scheme refuses a
/// request with no token, a wrong one of the same length, the right one's
/// prefix, or the right one under another scheme, and lets the right one
/// through; the document and the probes need none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_every_bearer_route_without_the_exact_token_from_its_environment() {
    let redis = TestRedis::start();
    let token = format!("env-token-{:016x}", fastrand::u64(..));
    let p = Proc::spawn_with_env(
        &redis,
        "orch-auth",
        &[],
        &[("AGENTIC_API_TOKEN", token.as_str())],
    )
    .await;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&token),
        "the token is on the command line"
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // The document and the probes: no token needed.
    let r = http.get(p.api("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    for probe in ["/health", "/ready"] {
        let r = http.get(format!("{}{probe}", p.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }

    let ops = operations(&doc);
    let open: Vec<_> = ops
        .iter()
        .filter(|(_, path, bearer)| path.starts_with("/api/v1/") && !bearer)
        .map(|(m, path, _)| format!("{m} {path}"))
        .collect();
    assert_eq!(
        open,
        vec!["GET /api/v1/openapi.json"],
        "only the document may be open"
    );
    assert!(
        ops.iter()
            .all(|(_, path, bearer)| path.starts_with("/api/v1/") || !bearer)
    );
    let guarded: Vec<_> = ops.iter().filter(|(_, _, bearer)| *bearer).collect();
    assert!(
        guarded.len() >= 20,
        "only {} guarded operations in the document",
        guarded.len()
    );

    let wrong: String = token
        .chars()
        .map(|ch| if ch == 'z' { 'y' } else { 'z' })
        .collect();
    assert_eq!(wrong.len(), token.len());
    let prefix = &token[..token.len() - 1];
    let refused_headers = [
        None,
        Some(format!("Bearer {wrong}")),
        Some(format!("Bearer {prefix}")),
        Some(format!("Basic {token}")),
        Some(format!("Token {token}")),
        Some(token.clone()),
    ];
    for (method, path, _) in &guarded {
        let url = format!("{}{}", p.url, concrete(path));
        let req = |auth: Option<&str>| {
            let mut r = http
                .request(method.parse().unwrap(), &url)
                .header("content-type", "application/json");
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r
        };
        for auth in &refused_headers {
            let r = req(auth.as_deref()).send().await.unwrap();
            let what = format!("{method} {path} with {auth:?}");
            assert_eq!(r.status(), 401, "{what}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        }
        // The right token gets past the check (whatever the route says then).
        let r = req(Some(&format!("Bearer {token}"))).send().await.unwrap();
        assert_ne!(r.status(), 401, "{method} {path} with the right token");
    }
    let log = p.log_text();
    assert!(log.contains("orchestrator serving"), "{log}");
    assert!(!log.contains(&token), "the token is in the log");
}

const SOLO: &str = r#"
name: solo
stages:
  - { name: build, agent: alpha }
"#;

/// How many times `ACL LOG` says user `user` was refused access to `key`
/// (or a key that starts with it, such as its event log).
async fn acl_refusals(c: &mut MultiplexedConnection, user: &str, key: &str) -> u64 {
    let entries: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("ACL").arg("LOG").query_async(c).await.unwrap();
    entries
        .iter()
        .filter(|e| {
            let s = |k: &str| {
                e.get(k)
                    .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                    .unwrap_or_default()
            };
            s("username") == user && s("object").starts_with(key)
        })
        .map(|e| redis::from_redis_value_ref::<u64>(&e["count"]).unwrap())
        .sum()
}

/// A result written while no orchestrator runs; then Redis refuses the
/// orchestrator's writes to workflows (an ACL: read-only on `wf` keys,
/// agent keys writable, so acknowledging results would still work). The
/// orchestrator reads the result, fails to store its transition, and must
/// leave it pending; once the refusal is lifted it is applied, once.
///
/// (`maxmemory` would refuse the acknowledgement script too, `#!lua`
/// scripts being refused whole under OOM, and so would hide a consumer
/// that acknowledges what it could not store.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_transition_is_refused_stays_pending_until_stored_once() {
    let redis = TestRedis::start();
    let mut admin = conn(&redis).await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "orch", "on", ">orch-pass", "~*", "&*", "+@all"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let orch_url = format!("redis://orch:orch-pass@127.0.0.1:{}", redis.port());

    // Start the workflow, then stop the orchestrator gracefully.
    let o = InProcess::start_as(&redis, &orch_url, &[]).await;
    let http = http();
    let r = http
        .post(o.api("/definitions"))
        .header("content-type", "application/yaml")
        .body(SOLO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let id = create(&http, &o.url, "solo", json!({})).await;
    o.shutdown().await;
    let task = format!("{id}:build:1");
    assert_eq!(task_ids(&redis, "alpha").await, vec![task.clone()]);

    // Its task runs while no orchestrator does: the result waits unread.
    let agents = Agents::start(&redis, &["alpha"]);
    let lab = agents.lab.clone();
    let results = keys().results(&agent_type("alpha"));
    wait_until("the build's result written", PATIENCE, || async {
        xlen(&redis, &results).await == 1
    })
    .await;
    agents.shutdown().await;
    let runs: Vec<(String, bool)> = lab.runs().into_iter().map(|r| (r.task_id, r.ok)).collect();
    assert_eq!(runs, vec![(task.clone(), true)]);

    // Redis now refuses the orchestrator's writes to workflows.
    let wf_key = keys().workflow(&id).unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "orch", "resetkeys", "%R~*"])
        .arg(format!("~{NS}:agent:*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    {
        let mut as_orch = redis::Client::open(orch_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let refused: redis::RedisResult<i64> = redis::cmd("HSET")
            .arg(&wf_key)
            .arg("probe")
            .arg(1)
            .query_async(&mut as_orch)
            .await;
        let e = refused.expect_err("a write to the workflow was allowed");
        assert_eq!(e.code(), Some("NOPERM"), "{e}");
        let _: Option<String> = redis::cmd("HGET")
            .arg(&wf_key)
            .arg("status")
            .query_async(&mut as_orch)
            .await
            .expect("reads stay allowed");
    }
    let _: () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();

    let o = InProcess::start_as(&redis, &orch_url, &[]).await;
    // The orchestrator tries again and again; each try is refused. Stop
    // waiting early if the result disappears: that is the failure.
    wait_until(
        "the result read three times and its transition refused as often, or the result gone",
        PATIENCE,
        || {
            let (redis, results, wf_key) = (&redis, &results, &wf_key);
            let mut admin = admin.clone();
            async move {
                let read = pending_results(redis, "alpha")
                    .await
                    .first()
                    .map_or(0, |(_, n)| *n);
                (read >= 3 && acl_refusals(&mut admin, "orch", wf_key).await >= 3)
                    || xlen(redis, results).await == 0
            }
        },
    )
    .await;
    let pending = pending_results(&redis, "alpha").await;
    assert_eq!(
        pending.len(),
        1,
        "the result whose transition was refused is not pending in the orchestrator group"
    );
    eprintln!(
        "pending while refused: {pending:?}; refusals: {}",
        acl_refusals(&mut admin, "orch", &wf_key).await
    );
    assert_eq!(xlen(&redis, &results).await, 1, "the result was deleted");
    let stored = load(&redis, &id).await;
    assert_eq!(stored.version, 1, "the workflow moved");
    assert_eq!(stored.workflow.status, WorkflowStatus::Running);
    assert_eq!(log_kinds(&redis, &id).await, kinds(&[("started", None)]));

    // Lifted: the pending result is applied, once.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "orch", "resetkeys", "~*"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let ended = wait_ended(&redis, std::slice::from_ref(&id), PATIENCE).await;
    assert_eq!(ended[0].status, WorkflowStatus::Completed);
    assert_eq!(ended[0].version, 2);
    assert_eq!(
        log_kinds(&redis, &id).await,
        kinds(&[("started", None), ("task_succeeded", Some("build"))])
    );
    wait_until(
        "the result acknowledged and deleted, its deadline cleared",
        PATIENCE,
        || async {
            xlen(&redis, &results).await == 0
                && pending_results(&redis, "alpha").await.is_empty()
                && deadlines(&redis, &["alpha"]).await == 0
        },
    )
    .await;
    let mut c = conn(&redis).await;
    let active: u64 = redis::cmd("ZCARD")
        .arg(keys().workflows_active())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(active, 0);
    o.shutdown().await;
}
