//! `agentctl streams` and `agentctl agents`: what is queued and who is
//! working on it.

use super::output::{Table, short};
use super::{CtlResult, Ctx};
use agent_sdk::schemas::AgentRecord;
use clap::Args;
use orchestrator::ops::streams;
use serde::Serialize;
use std::time::Duration;

pub(super) async fn streams(ctx: &Ctx) -> CtlResult {
    let mut conn = ctx.conn();
    let keys = ctx.client.keys();
    let types = streams::agent_types(&mut conn, keys).await?;
    let streams = streams::stream_stats(&mut conn, keys, &types).await?;
    let dead_letters = orchestrator::ops::housekeeping::dlq_stats(&mut conn, keys, &types).await?;
    ctx.out.show(
        &serde_json::json!({ "streams": streams, "dead_letters": dead_letters }),
        || {
            let mut t = Table::new(&[
                "TYPE",
                "BACKLOG",
                "PENDING",
                "OLDEST PENDING",
                "CONSUMERS",
                "DELAYED",
                "DLQ",
                "LAG",
            ]);
            for s in &streams {
                t.row(vec![
                    s.agent_type.clone(),
                    s.backlog.to_string(),
                    s.pending.to_string(),
                    s.oldest_pending_age_ms.map_or_else(|| "-".into(), short),
                    s.consumers.to_string(),
                    s.delayed.to_string(),
                    s.dlq.to_string(),
                    s.lag.map_or_else(|| "-".into(), |l| l.to_string()),
                ]);
            }
            t.print("no agent types in this namespace");
            super::housekeeping::print_dead_letters(&dead_letters);
        },
    );
    Ok(())
}

#[derive(Debug, Args)]
pub(super) struct AgentsArgs {
    /// Mark an instance stale when its last heartbeat is older than this.
    /// Two of the workers' default 5 s heartbeats: a record disappears
    /// after three, so a longer threshold would never show one.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
}

#[derive(Debug, Serialize)]
struct AgentView {
    #[serde(flatten)]
    record: AgentRecord,
    heartbeat_age_ms: u64,
    stale: bool,
}

pub(super) async fn agents(ctx: &Ctx, args: AgentsArgs) -> CtlResult {
    let mut records = ctx.client.agents().await?;
    records.sort_by(|a, b| (&a.agent_type, &a.instance_id).cmp(&(&b.agent_type, &b.instance_id)));
    // Ages by the Redis server's clock, like every other time the runtime
    // compares: this machine's clock may be off.
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut ctx.conn()).await?;
    let now = secs * 1000 + micros / 1000;
    let stale_ms = u64::try_from(args.stale_after.as_millis()).unwrap_or(u64::MAX);
    let views: Vec<AgentView> = records
        .into_iter()
        .map(|record| {
            let age = now.saturating_sub(record.last_seen_ms);
            AgentView {
                heartbeat_age_ms: age,
                stale: age > stale_ms,
                record,
            }
        })
        .collect();
    ctx.out.show(&serde_json::json!({ "agents": views }), || {
        let mut t = Table::new(&[
            "TYPE",
            "INSTANCE",
            "HOST",
            "STATUS",
            "IN-FLIGHT",
            "PROCESSED",
            "FAILED",
            "HEARTBEAT",
        ]);
        for v in &views {
            let r = &v.record;
            t.row(vec![
                r.agent_type.clone(),
                r.instance_id.clone(),
                r.host.clone(),
                if v.stale {
                    format!("{} (STALE)", r.status.as_str())
                } else {
                    r.status.as_str().to_owned()
                },
                format!("{}/{}", r.in_flight, r.concurrency),
                r.processed.to_string(),
                r.failed.to_string(),
                format!("{} ago", short(v.heartbeat_age_ms)),
            ]);
        }
        t.print("no live agents in this namespace");
        let stale = views.iter().filter(|v| v.stale).count();
        if stale > 0 {
            println!(
                "\n{stale} stale: no heartbeat for over {}; the process may be hung or gone",
                humantime::format_duration(args.stale_after)
            );
        }
    });
    Ok(())
}
