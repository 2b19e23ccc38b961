//! Samples, once a second while the load runs: Redis `used_memory` and
//! `connected_clients`, and each process's resident memory.

use crate::fleet::Pids;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One sample.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the load started.
    at_s: f64,
    used_memory: u64,
    clients: u64,
    /// Process name (without its index) → RSS in kB.
    rss_kb: Vec<(String, u64)>,
}

/// Every sample of a run.
#[derive(Debug, Default)]
pub(crate) struct Series(Vec<Sample>);

pub(crate) struct Sampler {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Series>,
}

impl Sampler {
    pub(crate) fn start(redis_url: String, pids: Pids) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(redis_url, pids, stop.clone()));
        Self { stop, handle }
    }

    /// Stops sampling; the samples taken while the load ran.
    pub(crate) async fn stop(self) -> Series {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

async fn run(redis_url: String, pids: Pids, stop: CancellationToken) -> Series {
    let started = Instant::now();
    let mut series = Series::default();
    let Ok(client) = redis::Client::open(redis_url) else {
        return series;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut conn = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return series,
            _ = tick.tick() => {}
        }
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let Ok(info) = redis::cmd("INFO")
            .arg("memory")
            .arg("clients")
            .query_async::<String>(c)
            .await
        else {
            conn = None;
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let live = pids.lock().expect("pids").clone();
        let rss_kb = live
            .into_iter()
            .filter_map(|(name, pid)| rss_kb(pid).map(|kb| (kind(&name), kb)))
            .collect();
        series.0.push(Sample {
            at_s: started.elapsed().as_secs_f64(),
            used_memory: field("used_memory"),
            clients: field("connected_clients"),
            rss_kb,
        });
    }
}

/// `orchestrator-1` → `orchestrator`; `agent-3-e2e` → `agent`.
fn kind(name: &str) -> String {
    name.split('-').next().unwrap_or(name).to_owned()
}

/// `VmRSS` of a live process, in kB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Series {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Redis `used_memory` at the plateau (the mean over the middle third of
    /// the run, once retention has had time to remove what ended) and at the
    /// end (the mean over the last tenth, at least three samples).
    pub(crate) fn plateau_and_end(&self) -> (u64, u64) {
        let Some(last) = self.0.last() else {
            return (0, 0);
        };
        let total = last.at_s;
        let mean = |v: Vec<u64>| {
            if v.is_empty() {
                0
            } else {
                v.iter().sum::<u64>() / v.len() as u64
            }
        };
        let plateau = mean(
            self.0
                .iter()
                .filter(|s| s.at_s >= total / 3.0 && s.at_s <= total * 2.0 / 3.0)
                .map(|s| s.used_memory)
                .collect(),
        );
        let tail = (self.0.len() / 10).max(3).min(self.0.len());
        let end = mean(
            self.0[self.0.len() - tail..]
                .iter()
                .map(|s| s.used_memory)
                .collect(),
        );
        (plateau, end)
    }

    pub(crate) fn connections_max(&self) -> u64 {
        self.0.iter().map(|s| s.clients).max().unwrap_or(0)
    }

    /// The largest RSS seen per kind of process.
    pub(crate) fn rss_max_kb(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (kind, kb) in self.0.iter().flat_map(|s| s.rss_kb.iter()) {
            let m = out.entry(kind.clone()).or_insert(0);
            *m = (*m).max(*kb);
        }
        out
    }
}
