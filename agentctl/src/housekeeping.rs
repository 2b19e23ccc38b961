//! `agentctl workflow delete`, `agentctl memory`, `agentctl streams
//! prune-consumers` and `agentctl streams trim-results`: what keeps Redis
//! bounded, by hand (the orchestrator's loops do the same on a schedule).

use super::output::{Table, short};
use super::{CtlResult, Ctx, ExitStatus};
use clap::{Args, Subcommand};
use orchestrator::ops::{housekeeping, memory, streams};
use orchestrator::store::Deletion;
use std::time::Duration;

/// `agentctl streams [COMMAND]`.
#[derive(Debug, Args)]
pub(super) struct StreamsArgs {
    #[command(subcommand)]
    pub(super) command: Option<StreamsCommand>,
}

#[derive(Debug, Subcommand)]
pub(super) enum StreamsCommand {
    /// Remove consumers from the `workers` and `orchestrator` groups that
    /// hold nothing, have no live registry record and are idle.
    PruneConsumers {
        /// Only consumers idle at least this long.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
    /// Cap the results streams nobody reads (never below what an
    /// orchestrator group has not applied).
    TrimResults {
        /// Entries kept in a results stream without a reader.
        #[arg(long, default_value_t = 10_000)]
        cap: u64,
        /// A group with no consumer active within this long has no reader.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
}

/// `agentctl memory`.
#[derive(Debug, Args)]
pub(super) struct MemoryArgs {
    /// Keys to look at (more is closer, slower).
    #[arg(long, default_value_t = memory::DEFAULT_SAMPLE as u64,
          value_parser = clap::value_parser!(u64).range(1..=memory::MAX_SAMPLE as u64))]
    sample: u64,
}

pub(super) async fn run(ctx: &Ctx, cmd: StreamsCommand) -> CtlResult {
    let mut conn = ctx.conn();
    let keys = ctx.client.keys();
    let types = streams::agent_types(&mut conn, keys).await?;
    match cmd {
        StreamsCommand::PruneConsumers { idle } => {
            let r = housekeeping::prune_consumers(&mut conn, keys, &types, idle).await?;
            ctx.out.show(&r, || {
                let mut t = Table::new(&["TYPE", "STREAM", "GROUP", "CONSUMER", "IDLE"]);
                for c in &r.removed {
                    t.row(vec![
                        c.agent_type.clone(),
                        c.stream.clone(),
                        c.group.clone(),
                        c.consumer.clone(),
                        short(c.idle_ms),
                    ]);
                }
                t.print("no dead consumers");
                println!(
                    "\nremoved {}; kept {} holding entries, {} registered, {} active within {}",
                    r.removed.len(),
                    r.kept_busy,
                    r.kept_registered,
                    r.kept_recent,
                    humantime::format_duration(idle)
                );
            });
        }
        StreamsCommand::TrimResults { cap, idle } => {
            if cap == 0 {
                return Err(ExitStatus::Usage("--cap must be above 0".into()));
            }
            let r = housekeeping::trim_results(&mut conn, keys, &types, cap, idle).await?;
            ctx.out.show(&serde_json::json!({ "results": r }), || {
                let mut t = Table::new(&["TYPE", "READER", "LENGTH BEFORE", "TRIMMED"]);
                for s in &r {
                    t.row(vec![
                        s.agent_type.clone(),
                        s.reader.clone(),
                        s.length_before.to_string(),
                        s.trimmed.to_string(),
                    ]);
                }
                t.print(&format!("no unread results stream over {cap} entries"));
            });
        }
    }
    Ok(())
}

/// Dead letters per type as `agentctl streams` shows them under its table.
pub(super) fn print_dead_letters(dlq: &[housekeeping::DlqStats]) {
    let with: Vec<_> = dlq.iter().filter(|d| d.count > 0).collect();
    if with.is_empty() {
        return;
    }
    println!();
    let mut t = Table::new(&["TYPE", "DEAD LETTERS", "BYTES", "OLDEST"]);
    for d in with {
        t.row(vec![
            d.agent_type.clone(),
            d.count.to_string(),
            d.bytes.to_string(),
            d.oldest_age_ms.map_or_else(|| "-".into(), short),
        ]);
    }
    t.print("");
}

pub(super) async fn delete_workflow(ctx: &Ctx, id: &str) -> CtlResult {
    agent_sdk::schemas::names::validate_workflow_id(id)
        .map_err(|e| ExitStatus::Usage(e.to_string()))?;
    let mut conn = ctx.conn();
    match ctx.engine.store().delete_ended(&mut conn, id).await? {
        Deletion::Deleted { status, bytes } => {
            ctx.out.show(
                &serde_json::json!({ "id": id, "status": status, "bytes": bytes }),
                || println!("deleted workflow {id} ({}; {bytes} bytes)", status.as_str()),
            );
            Ok(())
        }
        Deletion::Gone => Err(ExitStatus::NotFound(format!("workflow {id:?} not found"))),
        Deletion::NotEnded(s) => Err(ExitStatus::Conflict(format!(
            "workflow {id:?} has not ended (it is {}): only completed, failed or cancelled workflows are deleted; cancel or abort it first",
            s.as_str()
        ))),
        Deletion::OutboxPending(s) => Err(ExitStatus::Conflict(format!(
            "workflow {id:?} has ended ({}) but its last commands are still being carried out; try again in a moment",
            s.as_str()
        ))),
    }
}

pub(super) async fn memory(ctx: &Ctx, args: MemoryArgs) -> CtlResult {
    let mut conn = ctx.conn();
    let r = memory::memory_report(&mut conn, ctx.client.keys(), args.sample as usize).await?;
    ctx.out.show(&r, || {
        match (r.maxmemory, r.used_percent) {
            (Some(max), Some(p)) => println!(
                "used_memory {} of maxmemory {} ({p:.1} %, {} left; policy {})",
                r.used_memory,
                max,
                r.headroom_bytes.unwrap_or(0),
                r.maxmemory_policy
            ),
            _ => println!(
                "used_memory {}; no maxmemory set (Redis grows until the machine runs out)",
                r.used_memory
            ),
        }
        println!(
            "{} of {} keys scanned{}\n",
            r.scanned_keys,
            r.total_keys,
            if r.sampled {
                ": figures below are SAMPLED and extrapolated"
            } else {
                " (all)"
            }
        );
        let mut t = Table::new(&["FAMILY", "KEYS (EST.)", "BYTES (EST.)", "SAMPLED KEYS"]);
        for f in &r.families {
            t.row(vec![
                f.family.clone(),
                f.estimated_keys.to_string(),
                f.estimated_bytes.to_string(),
                f.sampled_keys.to_string(),
            ]);
        }
        t.print("no keys of this namespace in the sample");
    });
    Ok(())
}
