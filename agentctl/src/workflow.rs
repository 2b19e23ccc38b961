//! `agentctl workflow ...`: submit, inspect, watch and steer workflows.
//! Operator actions go through the engine's versioned transitions, the same
//! path as the HTTP API, so they are safe beside running orchestrators.

use super::output::{Table, ago, clip, or_dash, short, time};
use super::{CtlResult, Ctx, ExitStatus, json_arg};
use clap::Subcommand;
use orchestrator::engine::{NewWorkflow, OperatorAction};
use orchestrator::machine::{StageStatus, Workflow, WorkflowStatus};
use orchestrator::ops::fleet;
use orchestrator::ops::stuck::{self, StageWhy};
use orchestrator::store::{ListFilter, LogEntry};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(super) enum WorkflowCommand {
    /// Start a workflow of a registered definition.
    Submit {
        /// Definition name (`sdlc` is built in).
        definition: String,
        /// The workflow input (JSON), passed to every stage.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Workflow id (generated when absent).
        #[arg(long)]
        id: Option<String>,
        /// Definition version (the latest when absent).
        #[arg(long)]
        definition_version: Option<u32>,
        /// Then follow it stage by stage until it ends.
        #[arg(long)]
        watch: bool,
        /// With --watch: give up after this long (exit 5).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// One workflow: status and every stage.
    Get {
        /// Workflow id.
        id: String,
    },
    /// Workflows, newest first.
    List {
        /// Only this status (pending, running, awaiting_approval, blocked,
        /// compensating, completed, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this definition's.
        #[arg(long)]
        definition: Option<String>,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Go on from a previous page's cursor.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Follow a workflow's events live until it ends (exit 0 when it completes).
    Watch {
        /// Workflow id.
        id: String,
        /// Give up after this long (exit 5); a blocked workflow waits for a
        /// person, so scripts should set one.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Delete an ended (completed, failed, cancelled) workflow now: state,
    /// event log, index entries. A workflow that has not ended is refused (exit 4).
    Delete {
        /// Workflow id.
        id: String,
    },
    /// Stop dispatching, compensate, end `cancelled`.
    Cancel {
        /// Workflow id.
        id: String,
        /// Why (kept in the log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Compensate and end `failed` (for a blocked workflow nobody will replay).
    Abort {
        /// Workflow id.
        id: String,
        /// Why (kept in the log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let a stage that waits for approval run.
    Approve {
        /// Workflow id.
        id: String,
        /// The stage.
        stage: String,
    },
    /// Refuse a stage that waits for approval (the workflow fails and is compensated).
    Reject {
        /// Workflow id.
        id: String,
        /// The stage.
        stage: String,
        /// Why (kept in the log).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Serialize)]
struct WorkflowOut<'a> {
    #[serde(flatten)]
    workflow: &'a Workflow,
    version: u64,
    /// `workflow get`: why each stage that has not ended is where it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a [StageWhy]>,
}

pub(super) async fn run(ctx: &Ctx, cmd: WorkflowCommand) -> CtlResult {
    match cmd {
        WorkflowCommand::Submit {
            definition,
            input,
            id,
            definition_version,
            watch: follow,
            timeout,
        } => {
            let input = json_arg("--input", &input)?;
            let mut conn = ctx.conn();
            let created = ctx
                .engine
                .create(
                    &mut conn,
                    NewWorkflow {
                        definition,
                        version: definition_version,
                        input,
                        id,
                    },
                )
                .await?;
            let (wf, v) = (created.workflow, created.version);
            if follow {
                if ctx.out.json() {
                    // One document: the workflow as it ended.
                    return watch(ctx, &wf.id, false, timeout).await;
                }
                println!("submitted workflow {} ({})", wf.id, wf.definition);
                return watch(ctx, &wf.id, true, timeout).await;
            }
            ctx.out.show(
                &WorkflowOut {
                    workflow: &wf,
                    version: v,
                    why: None,
                },
                || {
                    println!("submitted workflow {} ({})", wf.id, wf.definition);
                    println!("follow it:  agentctl workflow watch {}", wf.id);
                },
            );
            Ok(())
        }
        WorkflowCommand::Get { id } => {
            let (wf, v) = load(ctx, &id).await?;
            let why = why(ctx, &wf).await?;
            ctx.out.show(
                &WorkflowOut {
                    workflow: &wf,
                    version: v,
                    why: Some(&why),
                },
                || {
                    print_workflow(&wf);
                    print_why(&why);
                },
            );
            Ok(())
        }
        WorkflowCommand::List {
            status,
            definition,
            limit,
            cursor,
        } => {
            if limit == 0 || limit > 1000 {
                return Err(ExitStatus::Usage("--limit must be 1..=1000".into()));
            }
            let status = status
                .map(|s| {
                    WorkflowStatus::parse(&s).ok_or_else(|| {
                        ExitStatus::Usage(format!(
                            "unknown status {s:?}: one of pending, running, awaiting_approval, \
                             blocked, compensating, completed, failed, cancelled"
                        ))
                    })
                })
                .transpose()?;
            let mut conn = ctx.conn();
            let page = ctx
                .engine
                .store()
                .list(
                    &mut conn,
                    &ListFilter {
                        status,
                        definition,
                        cursor,
                        limit,
                    },
                )
                .await?;
            ctx.out.show(&page, || {
                let mut t = Table::new(&["ID", "DEFINITION", "STATUS", "CREATED", "UPDATED"]);
                for s in &page.items {
                    t.row(vec![
                        s.id.clone(),
                        s.definition.clone(),
                        label(s.status),
                        ago(Some(s.created_at_ms)),
                        ago(Some(s.updated_at_ms)),
                    ]);
                }
                t.print("no workflows match");
                if let Some(c) = &page.next {
                    println!("\nmore: agentctl workflow list --cursor {c}");
                }
            });
            Ok(())
        }
        WorkflowCommand::Watch { id, timeout } => {
            load(ctx, &id).await?;
            watch(ctx, &id, !ctx.out.json(), timeout).await
        }
        WorkflowCommand::Delete { id } => super::housekeeping::delete_workflow(ctx, &id).await,
        WorkflowCommand::Cancel { id, reason } => {
            let reason = reason_arg(reason, "cancelled by an operator")?;
            act(ctx, &id, OperatorAction::Cancel { reason }).await
        }
        WorkflowCommand::Abort { id, reason } => {
            let reason = reason_arg(reason, "aborted by an operator")?;
            act(ctx, &id, OperatorAction::Abort { reason }).await
        }
        WorkflowCommand::Approve { id, stage } => {
            act(ctx, &id, OperatorAction::Approve { stage }).await
        }
        WorkflowCommand::Reject { id, stage, reason } => {
            let reason = reason_arg(reason, "rejected by an operator")?;
            act(ctx, &id, OperatorAction::Reject { stage, reason }).await
        }
    }
}

fn reason_arg(r: Option<String>, default: &str) -> CtlResult<String> {
    let r = r.unwrap_or_else(|| default.to_owned());
    if r.len() > 1024 {
        return Err(ExitStatus::Usage(
            "--reason is longer than 1024 bytes".into(),
        ));
    }
    Ok(r)
}

async fn load(ctx: &Ctx, id: &str) -> CtlResult<(Workflow, u64)> {
    agent_sdk::schemas::names::validate_workflow_id(id)
        .map_err(|e| ExitStatus::Usage(e.to_string()))?;
    let mut conn = ctx.conn();
    match ctx.engine.store().load(&mut conn, id).await? {
        Some(s) => Ok((s.workflow, s.version)),
        None => Err(ExitStatus::NotFound(format!("no workflow {id}"))),
    }
}

/// Carries out an operator's action: exit 3 for an unknown workflow or
/// stage, 4 when it would change nothing.
async fn act(ctx: &Ctx, id: &str, action: OperatorAction) -> CtlResult {
    agent_sdk::schemas::names::validate_workflow_id(id)
        .map_err(|e| ExitStatus::Usage(e.to_string()))?;
    let mut conn = ctx.conn();
    let (workflow, version) = ctx.engine.act(&mut conn, id, &action).await?;
    ctx.out.show(
        &WorkflowOut {
            workflow: &workflow,
            version,
            why: None,
        },
        || print_workflow(&workflow),
    );
    Ok(())
}

/// A status in words with a sign, readable without colour.
fn label(s: WorkflowStatus) -> String {
    let sign = match s {
        WorkflowStatus::Pending => "·",
        WorkflowStatus::Running => "▶",
        WorkflowStatus::AwaitingApproval => "?",
        WorkflowStatus::Blocked => "⏸",
        WorkflowStatus::Compensating => "↺",
        WorkflowStatus::Completed => "✓",
        WorkflowStatus::Failed => "✗",
        WorkflowStatus::Cancelled => "⊘",
    };
    format!("{sign} {}", s.as_str())
}

fn stage_label(s: StageStatus) -> String {
    let (sign, word) = match s {
        StageStatus::Pending => ("·", "pending"),
        StageStatus::AwaitingApproval => ("?", "awaiting_approval"),
        StageStatus::Running => ("▶", "running"),
        StageStatus::Completed => ("✓", "completed"),
        StageStatus::Failed => ("✗", "failed"),
        StageStatus::DeadLettered => ("⏸", "dead_lettered"),
        StageStatus::Skipped => ("-", "skipped"),
    };
    format!("{sign} {word}")
}

fn print_workflow(wf: &Workflow) {
    println!("workflow   {}", wf.id);
    println!("definition {} v{}", wf.definition, wf.definition_version);
    println!("status     {}", label(wf.status));
    println!("progress   {}%", wf.progress());
    println!(
        "created    {} ({})",
        time(wf.created_at_ms),
        ago(Some(wf.created_at_ms))
    );
    if let Some(e) = &wf.ending {
        println!(
            "ending     {}",
            serde_json::to_string(e).unwrap_or_default()
        );
    }
    println!();
    let mut t = Table::new(&["STAGE", "STATUS", "RUNS", "TOOK", "TASK", "ERROR"]);
    for s in &wf.stages {
        t.row(vec![
            s.name.clone(),
            stage_label(s.status),
            s.dispatches.to_string(),
            s.started_at_ms
                .zip(s.finished_at_ms)
                .map_or_else(|| "-".into(), |(a, b)| short_ms(b.saturating_sub(a))),
            or_dash(s.task_id.as_deref()),
            s.error
                .as_deref()
                .map_or_else(|| "-".into(), |e| clip(e, 60)),
        ]);
    }
    t.print("no stages");
    if wf.status == WorkflowStatus::Blocked {
        println!(
            "\nblocked on a dead letter: see it with `agentctl dlq list TYPE --workflow {}`, \
             replay it with `agentctl dlq replay TYPE ID`, or give up with `agentctl workflow abort {}`",
            wf.id, wf.id
        );
    }
}

/// Why each stage of `wf` that has not ended is where it is.
async fn why(ctx: &Ctx, wf: &Workflow) -> CtlResult<Vec<StageWhy>> {
    if wf.status.is_terminal() {
        return Ok(Vec::new());
    }
    let mut conn = ctx.conn();
    let def = ctx
        .engine
        .catalog()
        .get(&mut conn, &wf.definition, Some(wf.definition_version))
        .await?;
    Ok(stuck::explain(&mut conn, ctx.engine.keys(), wf, &def).await?)
}

fn print_why(why: &[StageWhy]) {
    if why.is_empty() {
        return;
    }
    println!();
    let mut t = Table::new(&["STAGE", "WHY"]);
    for w in why {
        t.row(vec![w.stage.clone(), w.reason.describe()]);
    }
    t.print("");
}

/// A duration in ms, precise below a minute.
fn short_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        short(ms)
    }
}

/// How often `watch` looks for new events.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// Follows `id` until it ends, printing each event when `human`; prints the
/// final workflow (JSON with `--json`). Exit 0 when it completed, 1 when it
/// failed or was cancelled.
async fn watch(ctx: &Ctx, id: &str, human: bool, timeout: Option<Duration>) -> CtlResult {
    let give_up = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut said_blocked = false;
    let mut conn = ctx.conn();
    let store = ctx.engine.store();
    let mut after: Option<String> = None;
    let mut ended = None;
    // Per stage: the (time, fraction) of the progress last printed.
    let mut shown = std::collections::HashMap::new();
    loop {
        let entries: Vec<LogEntry> = store.log(&mut conn, id, after.as_deref(), 1000).await?;
        for e in &entries {
            if human {
                println!(
                    "{}  {:<20} {:<18} {:>3}%  {}",
                    time(e.at_ms),
                    e.stage.as_deref().unwrap_or("-"),
                    e.kind,
                    e.progress,
                    label(e.status)
                );
            }
            after = Some(e.id.clone());
        }
        if !entries.is_empty() {
            continue;
        }
        // The log is read to its end. A workflow that had ended before this
        // read has no entry left to print.
        if let Some((wf, v)) = ended {
            return finish(ctx, id, human, &wf, v);
        }
        let (wf, v) = load(ctx, id).await?;
        if wf.status.is_terminal() {
            // Its last entries were stored with that state: one more read.
            ended = Some((wf, v));
            continue;
        }
        if human {
            show_progress(ctx, &wf, &mut shown).await;
        }
        if human && !said_blocked && wf.status == WorkflowStatus::Blocked {
            said_blocked = true;
            println!(
                "  blocked on a dead letter: replay it (agentctl dlq list TYPE --workflow {id}) \
                 or abort the workflow; still watching"
            );
        }
        if give_up.is_some_and(|t| tokio::time::Instant::now() >= t) {
            if !human {
                ctx.out.print_json(&WorkflowOut {
                    workflow: &wf,
                    version: v,
                    why: None,
                });
            }
            return Err(ExitStatus::TimedOut(format!(
                "workflow {id} is still {} after {}",
                wf.status.as_str(),
                humantime::format_duration(timeout.unwrap_or_default())
            )));
        }
        tokio::time::sleep(WATCH_POLL).await;
    }
}

/// Prints the progress of `wf`'s running stages that moved since `shown`.
/// Progress is for people: a failure to read it is skipped, not an error.
async fn show_progress(
    ctx: &Ctx,
    wf: &Workflow,
    shown: &mut std::collections::HashMap<String, (u64, u32)>,
) {
    let mut conn = ctx.conn();
    let Ok(def) = ctx
        .engine
        .catalog()
        .get(&mut conn, &wf.definition, Some(wf.definition_version))
        .await
    else {
        return;
    };
    let running: Vec<(&str, &str)> = wf
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Running)
        .filter_map(|s| Some((def.stage(&s.name)?.agent.as_str(), s.task_id.as_deref()?)))
        .collect();
    let Ok(progress) = fleet::running_progress(&mut conn, ctx.engine.keys(), &running).await else {
        return;
    };
    for s in &wf.stages {
        let Some(p) = s.task_id.as_ref().and_then(|t| progress.get(t)) else {
            continue;
        };
        let mark = (p.at_ms, p.fraction.to_bits());
        if shown.insert(s.name.clone(), mark) == Some(mark) {
            continue;
        }
        println!(
            "{}  {:<20} {:<18} {:>3}%  {}",
            time(p.at_ms),
            s.name,
            "progress",
            (p.fraction * 100.0).round() as u32,
            fleet::printable(&p.message)
        );
    }
}

fn finish(ctx: &Ctx, id: &str, human: bool, wf: &Workflow, version: u64) -> CtlResult {
    if human {
        println!();
        print_workflow(wf);
    } else {
        ctx.out.print_json(&WorkflowOut {
            workflow: wf,
            version,
            why: None,
        });
    }
    match wf.status {
        WorkflowStatus::Completed => Ok(()),
        other => Err(ExitStatus::Failed(format!(
            "workflow {id} ended {}",
            other.as_str()
        ))),
    }
}
