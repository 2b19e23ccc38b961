//! `agentctl streams` and `agentctl agents`: what is queued and who is
//! working on it.

use super::output::{Table, short};
use super::{CtlResult, Ctx};
use clap::Args;
use orchestrator::ops::{fleet, streams};
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
                "OLDEST WAITING",
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
                    s.oldest_waiting_age_ms.map_or_else(|| "-".into(), short),
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
    /// Only this agent type, one page of its instances (see --cursor).
    #[arg(long = "type", value_name = "AGENT_TYPE")]
    agent_type: Option<String>,
    /// Continue a listing of --type from the cursor the last page printed.
    #[arg(long, requires = "agent_type")]
    cursor: Option<String>,
    /// Instances listed per type (per page with --type), 1-1000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// A live instance with work waiting and no read, commit or progress for
    /// this long is WEDGED (the orchestrator's --wedged-after).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    wedged_after: Duration,
    /// Vanished instances are listed GONE this long after their last
    /// heartbeat, then forgotten (the orchestrator's --keep-gone).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    keep_gone: Duration,
}

#[derive(Debug, Serialize)]
struct AgentView {
    #[serde(flatten)]
    view: fleet::InstanceView,
    /// No heartbeat for three beats (the instance is gone).
    stale: bool,
}

pub(super) async fn agents(ctx: &Ctx, args: AgentsArgs) -> CtlResult {
    let mut conn = ctx.conn();
    let keys = ctx.client.keys();
    let settings = fleet::FleetSettings {
        wedged_after: args.wedged_after,
        keep_gone: args.keep_gone,
    };
    let types = match &args.agent_type {
        Some(t) => vec![super::agent_type_arg(t)?],
        None => fleet::types(&mut conn, keys).await?,
    };
    let cursor = args.cursor.clone().unwrap_or_else(|| "0".into());
    let limit = usize::from(args.limit);
    // One summary script call per type, and one page of instances per type:
    // never one command per instance.
    let mut summaries = Vec::with_capacity(types.len());
    let mut views = Vec::new();
    let mut next_cursor = None;
    let mut more = Vec::new();
    for t in &types {
        summaries.push(fleet::summary(&mut conn, keys, t, &settings).await?);
        let page = fleet::page(&mut conn, keys, t, &cursor, limit, &settings).await?;
        if page.next_cursor.is_some() || page.instances.len() > limit {
            more.push(t.to_string());
        }
        next_cursor = page.next_cursor;
        views.extend(page.instances.into_iter().map(|v| AgentView {
            stale: v.state == fleet::InstanceStatus::Gone,
            view: v,
        }));
    }
    views.sort_by(|a, b| {
        let (a, b) = (&a.view.record.record, &b.view.record.record);
        (&a.agent_type, &a.instance_id).cmp(&(&b.agent_type, &b.instance_id))
    });
    let json = serde_json::json!({
        "types": summaries,
        "agents": views,
        "next_cursor": if args.agent_type.is_some() { next_cursor.clone() } else { None },
    });
    ctx.out.show(&json, || {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".into(), |ms| format!("{} ago", short(ms)));
        let mut t = Table::new(&[
            "TYPE",
            "LIVE",
            "WEDGED",
            "GONE",
            "OLDEST HEARTBEAT",
            "NEWEST HEARTBEAT",
            "OLDEST WAITING",
        ]);
        for s in &summaries {
            t.row(vec![
                s.agent_type.clone(),
                s.live.to_string(),
                s.wedged.to_string(),
                s.gone.to_string(),
                opt(s.oldest_heartbeat_age_ms),
                opt(s.newest_heartbeat_age_ms),
                s.oldest_waiting_age_ms
                    .map_or_else(|| "-".into(), short),
            ]);
        }
        t.print("no agent instance has registered in this namespace");
        println!();
        let mut t = Table::new(&[
            "TYPE",
            "INSTANCE",
            "HOST",
            "STATUS",
            "IN-FLIGHT",
            "PROCESSED",
            "FAILED",
            "HEARTBEAT",
            "LAST READ",
            "LAST COMMIT",
        ]);
        for v in &views {
            let r = &v.view.record.record;
            let now = r.last_seen_ms + v.view.heartbeat_age_ms;
            let since = |at: Option<u64>| at.map_or_else(|| "-".into(), |at| format!("{} ago", short(now.saturating_sub(at))));
            t.row(vec![
                r.agent_type.clone(),
                r.instance_id.clone(),
                r.host.clone(),
                match v.view.state {
                    fleet::InstanceStatus::Wedged => format!(
                        "WEDGED (idle {})",
                        short(v.view.idle_ms)
                    ),
                    fleet::InstanceStatus::Gone => "GONE".to_owned(),
                    s => s.as_str().to_owned(),
                },
                format!("{}/{}", r.in_flight, r.concurrency),
                r.processed.to_string(),
                r.failed.to_string(),
                format!("{} ago", short(v.view.heartbeat_age_ms)),
                since(v.view.record.last_read_ms),
                since(v.view.record.last_commit_ms),
            ]);
        }
        t.print("no agent instances listed");
        let wedged = views.iter().filter(|v| v.view.state == fleet::InstanceStatus::Wedged).count();
        if wedged > 0 {
            println!(
                "\n{wedged} wedged: work waits for them but they have not read, committed or reported progress for over {}",
                humantime::format_duration(args.wedged_after)
            );
        }
        if let (Some(c), Some(t)) = (&next_cursor, &args.agent_type) {
            println!("\nmore: agentctl agents --type {t} --cursor {c}");
        } else if !more.is_empty() {
            println!("\nmore instances of {}: page with --type", more.join(", "));
        }
    });
    Ok(())
}
