//! The processes of the soak: a private Redis, the orchestrator replicas and
//! the agents, each a real child process that can be killed with `SIGKILL`
//! and started again with the same flags.

use crate::Args;
use agent_sdk::testing::{Proc, TestRedis, free_port};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The namespace of every key the soak writes.
pub(crate) const NS: &str = "soak";
/// The standalone tasks' agent type.
pub(crate) const TASK_TYPE: &str = "soak";
/// The stage types of the built-in `sdlc` definition.
pub(crate) const STAGES: [&str; 5] = ["scaffold", "validation", "e2e", "integration", "deployment"];
const ORCHESTRATORS: usize = 2;
const TASK_AGENTS: usize = 2;

/// A process of the fleet and how to start it again.
struct Member {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    proc: Proc,
    starts: usize,
    /// The API base URL of an orchestrator.
    api: Option<String>,
}

/// `(name, pid)` of every live member: what the sampler measures.
pub(crate) type Pids = Arc<Mutex<Vec<(String, u32)>>>;

/// How many processes were killed, by kind.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct Kills {
    pub(crate) agents: usize,
    pub(crate) orchestrators: usize,
}

pub(crate) struct Fleet {
    redis: TestRedis,
    work: PathBuf,
    members: Vec<Member>,
    pids: Pids,
    pub(crate) kills: Kills,
}

impl Fleet {
    /// Starts Redis, the orchestrators and the agents, and waits until the
    /// orchestrators are ready.
    pub(crate) async fn start(args: &Args) -> anyhow::Result<Self> {
        let redis = TestRedis::start();
        let work = args.work_dir.clone();
        let url_file = work.join("redis.url");
        std::fs::write(&url_file, redis.url()).context("write the Redis URL file")?;
        let tokens = orchestrator_server::testing::tokens_file(&work);
        let archive = work.join("archive.jsonl");
        let common = |extra: &[String]| -> Vec<String> {
            let mut v: Vec<String> = [
                "--redis-url-file",
                &url_file.display().to_string(),
                "--namespace",
                NS,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            v.extend_from_slice(extra);
            v
        };
        let mut fleet = Self {
            redis,
            work: work.clone(),
            members: Vec::new(),
            pids: Pids::default(),
            kills: Kills::default(),
        };
        for i in 0..ORCHESTRATORS {
            let listen = format!("127.0.0.1:{}", free_port());
            let mut flags = vec!["serve".to_owned()];
            flags.extend(common(&[
                "--listen".into(),
                listen.clone(),
                "--tokens-file".into(),
                tokens.display().to_string(),
                // A stable name, so a restarted replica finds its own
                // pending results at once.
                "--consumer".into(),
                format!("orchestrator-{i}"),
                "--claim-idle".into(),
                "3s".into(),
                "--sweep-interval".into(),
                "1s".into(),
                "--retention".into(),
                humantime::format_duration(args.retention).to_string(),
                "--retention-interval".into(),
                "1s".into(),
                "--archive-file".into(),
                archive.display().to_string(),
                // Keys that expire by TTL rather than by retention, at the
                // soak's scale of time, so memory plateaus within the run.
                "--dispatch-key-ttl".into(),
                humantime::format_duration(args.retention).to_string(),
            ]));
            let program = args.bin_dir.join("orchestrator");
            fleet.add(
                format!("orchestrator-{i}"),
                program,
                flags,
                Some(format!("http://{listen}")),
            );
        }
        let agents = STAGES
            .iter()
            .map(|t| t.to_string())
            .chain((0..TASK_AGENTS).map(|_| TASK_TYPE.to_owned()));
        for (i, t) in agents.enumerate() {
            let flags = common(&[
                "--agent-type".into(),
                t.clone(),
                "--concurrency".into(),
                "16".into(),
                // Short, so the tasks of a killed agent are taken over
                // within the soak's patience.
                "--claim-idle".into(),
                "6s".into(),
                "--lease-renew".into(),
                "2s".into(),
                "--result-ttl".into(),
                humantime::format_duration(args.retention).to_string(),
            ]);
            let program = args.bin_dir.join("fault-agent");
            fleet.add(format!("agent-{i}-{t}"), program, flags, None);
        }
        for api in fleet.apis() {
            orchestrator_server::testing::wait_ready(&api).await;
        }
        Ok(fleet)
    }

    fn add(&mut self, name: String, program: PathBuf, args: Vec<String>, api: Option<String>) {
        let proc = spawn(&self.work, &name, &program, &args, 0);
        self.members.push(Member {
            name,
            program,
            args,
            proc,
            starts: 1,
            api,
        });
        self.publish_pids();
    }

    fn publish_pids(&self) {
        let live = self
            .members
            .iter()
            .map(|m| (m.name.clone(), m.proc.child.id()))
            .collect();
        *self.pids.lock().expect("pids") = live;
    }

    /// The orchestrators' base URLs.
    pub(crate) fn apis(&self) -> Vec<String> {
        self.members.iter().filter_map(|m| m.api.clone()).collect()
    }

    pub(crate) fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub(crate) fn pids(&self) -> Pids {
        self.pids.clone()
    }

    pub(crate) fn archive(&self) -> PathBuf {
        self.work.join("archive.jsonl")
    }

    /// Kills one member with `SIGKILL` and starts it again: every third
    /// kill an orchestrator, the others an agent, each chosen at random, so
    /// even a short soak kills both kinds.
    pub(crate) async fn kill_one(&mut self) {
        let orchestrator = (self.kills.agents + self.kills.orchestrators) % 3 == 2;
        let kind: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].api.is_some() == orchestrator)
            .collect();
        let i = kind[fastrand::usize(..kind.len())];
        self.members[i].proc.kill9();
        if orchestrator {
            self.kills.orchestrators += 1;
        } else {
            self.kills.agents += 1;
        }
        // A moment down, like a supervisor's restart delay.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = &mut self.members[i];
        m.proc = spawn(&self.work, &m.name, &m.program, &m.args, m.starts);
        m.starts += 1;
        self.publish_pids();
    }

    /// Members that died by themselves (not by [`Fleet::kill_one`]): a crash
    /// the soak did not cause is a failure.
    pub(crate) fn crashed(&mut self) -> Vec<String> {
        self.members
            .iter_mut()
            .filter_map(|m| {
                m.proc
                    .exited()
                    .then(|| format!("{} (log {})", m.name, m.proc.log.display()))
            })
            .collect()
    }

    /// Stops every process (the accounting is done: `SIGKILL` is fine).
    pub(crate) fn stop(&mut self) {
        self.members.clear();
    }
}

fn spawn(
    work: &std::path::Path,
    name: &str,
    program: &PathBuf,
    args: &[String],
    start: usize,
) -> Proc {
    let log = work.join(format!("{name}.{start}.log"));
    Proc::spawn(name, program, args, &[("RUST_LOG", "warn")], log)
}
