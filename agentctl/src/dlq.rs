//! `agentctl dlq ...`: find, understand, replay, purge and move dead letters.

use super::output::{Table, ago, clean, clip, or_dash, time};
use super::{CtlResult, Ctx, ExitStatus, agent_type_arg};
use agent_sdk::DeadLetterFilter;
use agent_sdk::schemas::{AgentType, DeadLetter, EntryId};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orchestrator::ops::dlq::{self, PurgeSelection, ReplayOptions, ReplayOutcome, Selection};
use orchestrator::ops::streams;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
    /// Per agent type: count, oldest, newest; with a type: its dead letters.
    List {
        /// Agent type (all types when absent).
        agent_type: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this entry id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// One dead letter in full: the entry, the decoded envelope, the raw fields.
    Show {
        /// Agent type.
        agent_type: String,
        /// Dead-letter entry id (from `dlq list`).
        id: String,
    },
    /// Move dead letters back to the task stream with attempts reset.
    ///
    /// Atomic per entry: an entry is never both replayed and still dead, and
    /// of two operators replaying the same entry exactly one moves it. A
    /// replayed task of a blocked workflow resumes that workflow.
    Replay {
        /// Agent type.
        agent_type: String,
        /// These dead letters (entry ids).
        ids: Vec<String>,
        /// Every dead letter of the type.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Show what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many per second.
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
        /// Replay tasks of workflows that have ended too (left in the DLQ
        /// otherwise: their results would change nothing, their side
        /// effects would still happen).
        #[arg(long)]
        force: bool,
    },
    /// Delete dead letters for good (asks first unless --yes).
    Purge {
        /// Agent type.
        agent_type: String,
        /// These dead letters (entry ids).
        ids: Vec<String>,
        /// Every dead letter of the type.
        #[arg(long)]
        all: bool,
        /// Those dead-lettered more than this long ago (`7d`, `12h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Write dead letters as JSON lines to stdout (`> file`), to import elsewhere.
    Export {
        /// Agent type.
        agent_type: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Add the dead letters of a JSON-lines file (from `dlq export`; `-` for
    /// stdin) to their types' DLQs. The whole file is checked first: a bad
    /// line imports nothing.
    Import {
        /// The file.
        file: PathBuf,
    },
}

/// Filters of list, replay and export.
#[derive(Debug, Args, Default)]
pub(super) struct FilterArgs {
    /// Only errors containing this text (case-insensitive).
    #[arg(long)]
    error_contains: Option<String>,
    /// Only those failed since: a duration ago (`2h`) or a time (`2026-11-23T10:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// Only this workflow's.
    #[arg(long)]
    workflow: Option<String>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.error_contains.is_none() && self.since.is_none() && self.workflow.is_none()
    }

    fn filter(&self) -> CtlResult<DeadLetterFilter> {
        dlq::dead_letter_filter(
            self.error_contains.clone(),
            self.workflow.clone(),
            self.since.as_deref(),
        )
        .map_err(|e| ExitStatus::Usage(format!("--since: {e}")))
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if dlq::RATE_RANGE.contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of entries per second from {} to {}",
            dlq::RATE_RANGE.start(),
            dlq::RATE_RANGE.end()
        )),
    }
}

/// Largest `dlq import` file.
const MAX_IMPORT_BYTES: u64 = 1 << 30;

/// Checks ids given on the command line; returns them without repeats
/// (an id named twice is taken once, not reported gone the second time).
fn check_ids(ids: Vec<String>) -> CtlResult<Vec<String>> {
    if let Some(bad) = ids.iter().find(|i| EntryId::parse(i).is_none()) {
        return Err(ExitStatus::Usage(format!(
            "{bad:?} is not a dead-letter id (an entry id like 1763900000000-0, from `dlq list`)"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    Ok(ids.into_iter().filter(|i| seen.insert(i.clone())).collect())
}

pub(super) async fn run(ctx: &Ctx, cmd: DlqCommand) -> CtlResult {
    match cmd {
        DlqCommand::List {
            agent_type: None,
            filter,
            ..
        } => {
            if !filter.is_empty() {
                return Err(ExitStatus::Usage(
                    "filters need an agent type: agentctl dlq list TYPE --error-contains ..."
                        .into(),
                ));
            }
            queues(ctx).await
        }
        DlqCommand::List {
            agent_type: Some(t),
            filter,
            limit,
            after,
        } => list(ctx, &agent_type_arg(&t)?, &filter, limit, after).await,
        DlqCommand::Show { agent_type, id } => show(ctx, &agent_type_arg(&agent_type)?, &id).await,
        DlqCommand::Replay {
            agent_type,
            ids,
            all,
            filter,
            dry_run,
            rate,
            force,
        } => {
            let t = agent_type_arg(&agent_type)?;
            let kinds =
                usize::from(!ids.is_empty()) + usize::from(all) + usize::from(!filter.is_empty());
            if kinds != 1 {
                return Err(ExitStatus::Usage(
                    "say which dead letters to replay: IDs, --all, or filters (--error-contains, --since, --workflow)"
                        .into(),
                ));
            }
            let selection = if !ids.is_empty() {
                Selection::Ids(check_ids(ids)?)
            } else {
                Selection::Matching(filter.filter()?)
            };
            let opts = ReplayOptions {
                dry_run,
                rate,
                force,
                ..ReplayOptions::default()
            };
            replay(ctx, &t, &selection, all, opts).await
        }
        DlqCommand::Purge {
            agent_type,
            ids,
            all,
            older_than,
            yes,
        } => {
            let t = agent_type_arg(&agent_type)?;
            let kinds =
                usize::from(!ids.is_empty()) + usize::from(all) + usize::from(older_than.is_some());
            if kinds != 1 {
                return Err(ExitStatus::Usage(
                    "say which dead letters to purge: IDs, --all, or --older-than D".into(),
                ));
            }
            let selection = if !ids.is_empty() {
                PurgeSelection::Ids(check_ids(ids)?)
            } else if let Some(age) = older_than {
                PurgeSelection::OlderThan(age)
            } else {
                PurgeSelection::All
            };
            purge(ctx, &t, &selection, yes).await
        }
        DlqCommand::Export { agent_type, filter } => {
            export(ctx, &agent_type_arg(&agent_type)?, &filter).await
        }
        DlqCommand::Import { file } => import(ctx, &file).await,
    }
}

async fn queues(ctx: &Ctx) -> CtlResult {
    let mut conn = ctx.conn();
    let keys = ctx.client.keys();
    let types = streams::agent_types(&mut conn, keys).await?;
    let queues = dlq::dlq_summaries(&mut conn, keys, &types).await?;
    ctx.out.show(&serde_json::json!({ "queues": queues }), || {
        let mut t = Table::new(&["TYPE", "DEAD", "OLDEST", "NEWEST"]);
        for q in &queues {
            t.row(vec![
                q.agent_type.clone(),
                q.count.to_string(),
                ago(q.oldest_ms),
                ago(q.newest_ms),
            ]);
        }
        t.print("no agent types in this namespace");
        let total: u64 = queues.iter().map(|q| q.count).sum();
        if total > 0 {
            println!("\n{total} dead letters; see them with: agentctl dlq list TYPE");
        }
    });
    Ok(())
}

async fn list(
    ctx: &Ctx,
    t: &AgentType,
    filter: &FilterArgs,
    limit: usize,
    after: Option<String>,
) -> CtlResult {
    if limit == 0 || limit > 1000 {
        return Err(ExitStatus::Usage("--limit must be 1..=1000".into()));
    }
    if let Some(a) = &after {
        check_ids(vec![a.clone()])?;
    }
    let page = ctx
        .client
        .dead_letters()
        .list(
            t,
            &DeadLetterFilter {
                limit,
                after,
                ..filter.filter()?
            },
        )
        .await?;
    let items: Vec<serde_json::Value> = page.items.iter().map(summary_json).collect();
    ctx.out.show(
        &serde_json::json!({ "items": items, "next": page.next }),
        || {
            let mut table = Table::new(&[
                "ID", "TASK", "WORKFLOW", "STAGE", "ATTEMPTS", "REASON", "FAILED", "ERROR",
            ]);
            for d in &page.items {
                table.row(vec![
                    d.id.clone(),
                    or_dash(d.task_id.as_deref()),
                    or_dash(d.workflow_id.as_deref()),
                    or_dash(d.stage.as_deref()),
                    d.attempts.to_string(),
                    d.reason.as_str().to_owned(),
                    ago(Some(d.failed_at_ms)),
                    clip(&d.error, 60),
                ]);
            }
            table.print(&format!("no dead letters of {t} match"));
            if let Some(next) = &page.next {
                println!("\nmore: agentctl dlq list {t} --after {next}");
            }
        },
    );
    Ok(())
}

async fn show(ctx: &Ctx, t: &AgentType, id: &str) -> CtlResult {
    check_ids(vec![id.to_owned()])?;
    let d = ctx.client.dead_letters().get(t, id).await?.ok_or_else(|| {
        ExitStatus::NotFound(format!(
            "no dead letter {id} in {t}'s DLQ (replayed or purged already?)"
        ))
    })?;
    let envelope = d.envelope();
    ctx.out.show(&detail_json(&d, &envelope), || {
        let s = &d;
        println!("dead letter  {}  ({t})", s.id);
        println!("reason       {}", clean(s.reason.as_str()));
        println!("error        {}", clean(&s.error));
        println!("attempts     {}", s.attempts);
        println!(
            "failed at    {} ({})",
            time(s.failed_at_ms),
            ago(Some(s.failed_at_ms))
        );
        println!("worker       {}", clean(&s.worker));
        println!("task         {}", clean(&or_dash(s.task_id.as_deref())));
        println!("workflow     {}", clean(&or_dash(s.workflow_id.as_deref())));
        println!("stage        {}", clean(&or_dash(s.stage.as_deref())));
        println!("source entry {}", clean(&s.source_id));
        match &envelope {
            Ok(env) => {
                println!("\nenvelope (decoded from raw.body):");
                let text = serde_json::to_string_pretty(env).unwrap_or_default();
                for l in text.lines() {
                    println!("  {l}");
                }
            }
            Err(why) => println!("\nenvelope: cannot be decoded: {}", clean(why)),
        }
        println!("\nraw fields (the original entry, byte for byte):");
        for (name, v) in &d.raw {
            match std::str::from_utf8(v) {
                Ok(text) => println!("  {} = {}", clean(name), clip(text, 200)),
                Err(_) => println!("  {} = base64:{}", clean(name), clip(&base64_of(v), 200)),
            }
        }
        println!("\nreplay it:  agentctl dlq replay {t} {}", s.id);
    });
    Ok(())
}

async fn replay(
    ctx: &Ctx,
    t: &AgentType,
    selection: &Selection,
    all: bool,
    opts: ReplayOptions,
) -> CtlResult {
    let total = match selection {
        Selection::Ids(ids) => Some(ids.len() as u64),
        Selection::Matching(_) if all => Some(ctx.client.dead_letters().count(t).await?),
        Selection::Matching(_) => None,
    };
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    // Only for people watching a terminal, and only when there is enough
    // to watch: scripts get the summary alone.
    let visible = std::io::stderr().is_terminal()
        && !ctx.out.json()
        && !opts.dry_run
        && total.is_none_or(|n| n >= 100);
    bar.set_draw_target(if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let mut conn = ctx.conn();
    let report = dlq::replay(&ctx.engine, &mut conn, t, selection, &opts, |_| bar.inc(1)).await?;
    bar.finish_and_clear();
    ctx.out.show(&report, || {
        if report.dry_run {
            let mut table = Table::new(&["ID", "TASK", "WORKFLOW", "WOULD"]);
            for i in &report.items {
                table.row(vec![
                    i.id.clone(),
                    or_dash(i.task_id.as_deref()),
                    or_dash(i.workflow_id.as_deref()),
                    match i.outcome {
                        ReplayOutcome::WouldReplay => "replay".into(),
                        ReplayOutcome::WorkflowEnded => "stay (its workflow ended; --force)".into(),
                        _ => "- (not in the DLQ)".into(),
                    },
                ]);
            }
            table.print(&format!("no dead letters of {t} match"));
            println!(
                "\ndry run: {} would be replayed; nothing was moved",
                report
                    .items
                    .iter()
                    .filter(|i| i.outcome == ReplayOutcome::WouldReplay)
                    .count()
            );
        } else {
            for i in &report.items {
                match i.outcome {
                    ReplayOutcome::Gone => {
                        println!("{}: not in the DLQ (replayed or purged already?)", i.id);
                    }
                    ReplayOutcome::WorkflowEnded => println!(
                        "{}: left in the DLQ: workflow {} has ended (--force replays it anyway)",
                        i.id,
                        clean(i.workflow_id.as_deref().unwrap_or("-"))
                    ),
                    ReplayOutcome::Failed => println!(
                        "{}: left in the DLQ: {}",
                        i.id,
                        clean(i.error.as_deref().unwrap_or("refused"))
                    ),
                    _ => {}
                }
            }
            let mut also = Vec::new();
            for (n, what) in [
                (report.gone, "were gone"),
                (report.skipped, "belong to ended workflows"),
                (report.failed, "could not be moved"),
            ] {
                if n > 0 {
                    also.push(format!("{n} {what}"));
                }
            }
            println!(
                "replayed {} of {} dead letters of {t}{}",
                report.replayed,
                report.matched,
                if also.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", also.join(", "))
                }
            );
        }
    });
    // Named ids that were not there are worth a non-zero exit: the
    // operator asked for something that did not happen.
    if report.failed > 0 {
        return Err(ExitStatus::Internal(format!(
            "{} dead letters of {t} could not be moved; they are still in the DLQ",
            report.failed
        )));
    }
    if matches!(selection, Selection::Ids(_)) && report.gone > 0 {
        return Err(ExitStatus::NotFound(format!(
            "{} of the given dead letters were not in {t}'s DLQ",
            report.gone
        )));
    }
    Ok(())
}

/// Asks on stderr, reads a line from stdin: true for y / yes.
fn confirm(question: &str) -> CtlResult<bool> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| ExitStatus::Internal(format!("cannot read the answer: {e}")))?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

async fn purge(ctx: &Ctx, t: &AgentType, selection: &PurgeSelection, yes: bool) -> CtlResult {
    let dlq = ctx.client.dead_letters();
    if !yes {
        let what = match selection {
            PurgeSelection::Ids(ids) => format!("{} dead letters of {t}", ids.len()),
            PurgeSelection::All => format!("all {} dead letters of {t}", dlq.count(t).await?),
            PurgeSelection::OlderThan(d) => format!(
                "the dead letters of {t} older than {}",
                humantime::format_duration(*d)
            ),
            PurgeSelection::Matching(_) => format!("the matching dead letters of {t}"),
        };
        if !confirm(&format!("Delete {what} for good?"))? {
            return Err(ExitStatus::Failed(
                "not confirmed; nothing was purged".into(),
            ));
        }
    }
    let mut conn = ctx.conn();
    let purged = dlq::purge(&dlq, &mut conn, t, selection).await?;
    ctx.out.show(&serde_json::json!({ "purged": purged }), || {
        println!("purged {purged} dead letters of {t}");
    });
    if let PurgeSelection::Ids(ids) = selection
        && (purged as usize) < ids.len()
    {
        return Err(ExitStatus::NotFound(format!(
            "{} of the given dead letters were not in {t}'s DLQ",
            ids.len() - purged as usize
        )));
    }
    Ok(())
}

async fn export(ctx: &Ctx, t: &AgentType, filter: &FilterArgs) -> CtlResult {
    // A page at a time: a large DLQ is never held whole in memory.
    let dlq = ctx.client.dead_letters();
    let mut walk = dlq::Walk::new(&Selection::Matching(filter.filter()?));
    let write_error = |e: std::io::Error| ExitStatus::Internal(format!("cannot write: {e}"));
    let mut n = 0u64;
    while let Some(page) = walk.next(&dlq, t).await? {
        let stdout = std::io::stdout();
        let mut o = stdout.lock();
        for d in page.into_iter().flatten() {
            let line = serde_json::to_string(&d).map_err(|e| {
                ExitStatus::Internal(format!("cannot encode dead letter {}: {e}", d.id))
            })?;
            writeln!(o, "{line}").map_err(write_error)?;
            n += 1;
        }
        o.flush().map_err(write_error)?;
    }
    ctx.out.note(&format!("exported {n} dead letters of {t}"));
    Ok(())
}

#[derive(Debug, Serialize)]
struct Imported {
    imported: u64,
    by_type: BTreeMap<String, u64>,
}

async fn import(ctx: &Ctx, file: &PathBuf) -> CtlResult {
    let text = read_input(file)?;
    let mut letters: Vec<(AgentType, DeadLetter)> = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<DeadLetter>(line)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                if d.raw.is_empty() {
                    // A replay rebuilds the task from these: without them
                    // the dead letter could only ever be purged.
                    return Err("it has no raw fields (the original entry) to replay".into());
                }
                AgentType::new(&d.agent_type)
                    .map(|t| (t, d))
                    .map_err(|e| e.to_string())
            }) {
            Ok(x) => letters.push(x),
            Err(e) => bad.push(format!("line {}: {e}", n + 1)),
        }
    }
    if !bad.is_empty() {
        let shown: Vec<&String> = bad.iter().take(5).collect();
        return Err(ExitStatus::Data(format!(
            "{}: {} bad lines, nothing imported; {}",
            file.display(),
            bad.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let dlq = ctx.client.dead_letters();
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for (t, d) in &letters {
        dlq.import(t, d).await?;
        *by_type.entry(t.to_string()).or_default() += 1;
    }
    let report = Imported {
        imported: letters.len() as u64,
        by_type,
    };
    ctx.out.show(&report, || {
        println!("imported {} dead letters", report.imported);
        for (t, n) in &report.by_type {
            println!("  {t}: {n}");
        }
    });
    Ok(())
}

fn read_input(file: &PathBuf) -> CtlResult<String> {
    use std::io::Read;
    let mut text = String::new();
    let too_big = || {
        ExitStatus::Data(format!(
            "{}: over the limit of {MAX_IMPORT_BYTES} bytes",
            file.display()
        ))
    };
    if file.as_os_str() == "-" {
        let n = std::io::stdin()
            .lock()
            .take(MAX_IMPORT_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| ExitStatus::Data(format!("stdin: {e}")))?;
        if n as u64 > MAX_IMPORT_BYTES {
            return Err(too_big());
        }
        return Ok(text);
    }
    let f = std::fs::File::open(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ExitStatus::NotFound(format!("{}: no such file", file.display()))
        } else {
            ExitStatus::Data(format!("{}: {e}", file.display()))
        }
    })?;
    let n = f
        .take(MAX_IMPORT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ExitStatus::Data(format!("{}: {e}", file.display())))?;
    if n as u64 > MAX_IMPORT_BYTES {
        return Err(too_big());
    }
    Ok(text)
}

/// A dead letter as `--json` lists show it: every field but the raw ones.
fn summary_json(d: &DeadLetter) -> serde_json::Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("raw");
    }
    v
}

/// A dead letter as `dlq show --json` shows it: the entry, the envelope
/// decoded from its raw body (or why it cannot be), and the raw fields as
/// text (when UTF-8) and base64.
fn detail_json(
    d: &DeadLetter,
    envelope: &std::result::Result<agent_sdk::schemas::TaskEnvelope, String>,
) -> serde_json::Value {
    let raw: Vec<serde_json::Value> = d
        .raw
        .iter()
        .map(|(name, v)| {
            serde_json::json!({
                "name": name,
                "text": std::str::from_utf8(v).ok(),
                "base64": base64_of(v),
            })
        })
        .collect();
    serde_json::json!({
        "dead_letter": summary_json(d),
        "envelope": envelope.as_ref().ok(),
        "decode_error": envelope.as_ref().err(),
        "raw": raw,
    })
}

fn base64_of(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(v)
}
