//! `agentctl task ...`: enqueue a standalone task, read a result.

use super::output::or_dash;
use super::{CtlResult, Ctx, ExitStatus, agent_type_arg, json_arg};
use agent_sdk::EnqueueOptions;
use agent_sdk::schemas::{ResultEnvelope, TaskStatus};
use clap::Subcommand;
use orchestrator::ops::streams;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(super) enum TaskCommand {
    /// Enqueue a task for an agent type.
    Enqueue {
        /// Agent type.
        agent_type: String,
        /// The task input (JSON).
        #[arg(long)]
        input: String,
        /// Enqueue at most once per key (for 24 h).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Run no sooner than this from now (`30s`).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Wait for the result and print it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// A task's result (looked up in every agent type unless --type is given).
    Get {
        /// Task id.
        id: String,
        /// Agent type.
        #[arg(long = "type")]
        agent_type: Option<String>,
    },
}

#[derive(Debug, Serialize)]
struct EnqueuedView {
    task_id: String,
    agent_type: String,
    duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<ResultEnvelope>,
}

pub(super) async fn run(ctx: &Ctx, cmd: TaskCommand) -> CtlResult {
    match cmd {
        TaskCommand::Enqueue {
            agent_type,
            input,
            idempotency_key,
            delay,
            wait,
            timeout,
        } => {
            let t = agent_type_arg(&agent_type)?;
            let input = json_arg("--input", &input)?;
            let e = ctx
                .client
                .enqueue(
                    &t,
                    &input,
                    EnqueueOptions {
                        idempotency_key,
                        delay,
                        ..EnqueueOptions::default()
                    },
                )
                .await?;
            let mut view = EnqueuedView {
                task_id: e.task_id.clone(),
                agent_type: t.to_string(),
                duplicate: e.duplicate,
                result: None,
            };
            if !ctx.out.json() {
                println!(
                    "{} task {} for {t}",
                    if e.duplicate {
                        "already enqueued (same idempotency key):"
                    } else {
                        "enqueued"
                    },
                    e.task_id
                );
            }
            if wait {
                let wait_for = timeout.saturating_add(delay.unwrap_or_default());
                view.result = ctx.client.wait_for_result(&t, &e.task_id, wait_for).await?;
                if view.result.is_none() {
                    if ctx.out.json() {
                        ctx.out.print_json(&view);
                    }
                    return Err(ExitStatus::TimedOut(format!(
                        "no result for task {} within {}",
                        e.task_id,
                        humantime::format_duration(wait_for)
                    )));
                }
            }
            if ctx.out.json() {
                ctx.out.print_json(&view);
            } else if let Some(r) = &view.result {
                print_result(r);
            }
            view.result.as_ref().map_or(Ok(()), outcome)
        }
        TaskCommand::Get { id, agent_type } => {
            agent_sdk::schemas::names::validate_task_id(&id)
                .map_err(|e| ExitStatus::Usage(e.to_string()))?;
            let types = match agent_type {
                Some(t) => vec![agent_type_arg(&t)?],
                None => {
                    let mut conn = ctx.conn();
                    streams::agent_types(&mut conn, ctx.client.keys()).await?
                }
            };
            for t in &types {
                if let Some(r) = ctx.client.result(t, &id).await? {
                    ctx.out.show(&r, || {
                        println!("task {id} ({t})");
                        print_result(&r);
                    });
                    return Ok(());
                }
            }
            Err(ExitStatus::NotFound(format!(
                "no result for task {id}: not finished yet, its result expired, or no such task"
            )))
        }
    }
}

fn print_result(r: &ResultEnvelope) {
    println!("status   {}", r.status.as_str());
    println!("attempt  {}", r.attempt);
    println!("worker   {}", r.worker);
    println!("workflow {}", or_dash(r.workflow_id.as_deref()));
    if let Some(e) = &r.error {
        println!("error    {}", e.message);
    }
    if let Some(o) = &r.output {
        println!(
            "output   {}",
            serde_json::to_string_pretty(o).unwrap_or_default()
        );
    }
}

/// A result's status as the exit status: only success is success.
fn outcome(r: &ResultEnvelope) -> CtlResult {
    match r.status {
        TaskStatus::Succeeded => Ok(()),
        other => Err(ExitStatus::Failed(format!(
            "task {} {}",
            r.task_id,
            other.as_str()
        ))),
    }
}
