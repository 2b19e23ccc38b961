//! Dead-letter operations: list, get, find by task, replay, purge. The
//! operator CLI and the orchestrator build on these.
//!
//! Every operation that adds, replays or deletes dead letters keeps the
//! dlq-index (`N:agent:{T}:dlq-index`: task id → entry id of its newest dead
//! letter) in the same atomic step, so [`DeadLetters::find_by_task`] is one
//! `HGET` and one `XRANGE` whatever the DLQ's length.

use crate::stream::{Entry, parse_entries};
use crate::{Error, Result, scripts};
use redis::aio::ConnectionManager;
use schemas::{AgentType, DeadLetter, DeadLetterReason, Keys};

/// Most entries [`DeadLetters::find_by_task`] reads when its task is not in
/// the index (a dead letter written before the index existed).
pub const FIND_SCAN_BUDGET: usize = 10_000;

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this reason.
    pub reason: Option<DeadLetterReason>,
    /// Only this task.
    pub task_id: Option<String>,
    /// Only this workflow.
    pub workflow_id: Option<String>,
    /// Only those whose error message contains this text (case-insensitive).
    pub error_contains: Option<String>,
    /// Only those that failed at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Start after this DLQ entry id (the `next` of a previous page).
    pub after: Option<String>,
    /// Page size; 50 when 0, at most 1000.
    pub limit: usize,
}

/// One page of dead letters, oldest first.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterPage {
    /// The matching dead letters.
    pub items: Vec<DeadLetter>,
    /// Pass as `after` to get the next page; `None` at the end. A page can
    /// be short (even empty) and still have one: a call reads at most
    /// 10,000 entries looking for matches.
    pub next: Option<String>,
}

/// Dead-letter operations of one namespace.
#[derive(Clone)]
pub struct DeadLetters {
    conn: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("namespace", self.keys.namespace())
            .finish()
    }
}

fn to_dead_letter(e: &Entry) -> Result<DeadLetter> {
    Ok(DeadLetter::from_entry(&e.id, &e.fields)?)
}

/// `XRANGE key start end [COUNT n]`, parsed keeping field order.
async fn range(
    conn: &mut ConnectionManager,
    key: &str,
    start: &str,
    end: &str,
    count: Option<usize>,
) -> Result<Vec<Entry>> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(key).arg(start).arg(end);
    if let Some(n) = count {
        cmd.arg("COUNT").arg(n);
    }
    let v: redis::Value = cmd.query_async(conn).await?;
    Ok(parse_entries(v))
}

impl DeadLetters {
    pub(crate) fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Self { conn, keys }
    }

    /// Lists dead letters of `agent_type` matching `filter`, oldest first.
    pub async fn list(
        &self,
        agent_type: &AgentType,
        filter: &DeadLetterFilter,
    ) -> Result<DeadLetterPage> {
        let limit = match filter.limit {
            0 => 50,
            n => n.min(1000),
        };
        let key = self.keys.dlq(agent_type);
        let mut conn = self.conn.clone();
        let mut start = match &filter.after {
            Some(id) => format!("({id}"),
            None => "-".to_owned(),
        };
        let needle = filter.error_contains.as_ref().map(|n| n.to_lowercase());
        let mut page = DeadLetterPage::default();
        // Filters are applied here, so scan in chunks until the page is
        // full, at most SCAN_BUDGET entries per call: a filter that matches
        // little of a long DLQ returns a short page and a cursor to go on
        // from, rather than reading the whole stream every time.
        const CHUNK: usize = 500;
        const SCAN_BUDGET: usize = 10_000;
        let mut scanned = 0;
        loop {
            let reply = range(&mut conn, &key, &start, "+", Some(CHUNK)).await?;
            let n = reply.len();
            scanned += n;
            for e in reply {
                start = format!("({}", e.id);
                let id = e.id.clone();
                let d = match to_dead_letter(&e) {
                    Ok(d) => d,
                    Err(err) => {
                        tracing::warn!(%id, error = %err, "leaving out an unreadable DLQ entry");
                        continue;
                    }
                };
                let keep = filter.reason.is_none_or(|r| r == d.reason)
                    && filter
                        .task_id
                        .as_ref()
                        .is_none_or(|t| d.task_id.as_ref() == Some(t))
                    && filter
                        .workflow_id
                        .as_ref()
                        .is_none_or(|w| d.workflow_id.as_ref() == Some(w))
                    && filter.since_ms.is_none_or(|t| d.failed_at_ms >= t)
                    && needle
                        .as_ref()
                        .is_none_or(|n| d.error.to_lowercase().contains(n.as_str()));
                if keep {
                    page.items.push(d);
                    if page.items.len() == limit {
                        page.next = Some(id);
                        return Ok(page);
                    }
                }
            }
            if n < CHUNK {
                return Ok(page);
            }
            if scanned >= SCAN_BUDGET {
                // `start` is "(<last id scanned>".
                page.next = Some(start.trim_start_matches('(').to_owned());
                return Ok(page);
            }
        }
    }

    /// One dead letter by its DLQ entry id.
    pub async fn get(&self, agent_type: &AgentType, id: &str) -> Result<Option<DeadLetter>> {
        let mut conn = self.conn.clone();
        let key = self.keys.dlq(agent_type);
        let found = range(&mut conn, &key, id, id, None).await?;
        found.first().map(to_dead_letter).transpose()
    }

    /// Moves a dead letter back to its task stream with attempts reset, in
    /// one atomic step. Returns the new task entry id, or `None` if there is
    /// no such dead letter (already replayed or purged).
    pub async fn replay(&self, agent_type: &AgentType, id: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(scripts::REPLAY
            .key(self.keys.dlq(agent_type))
            .key(self.keys.tasks(agent_type))
            .key(self.keys.dlq_index(agent_type))
            .arg(id)
            .invoke_async(&mut conn)
            .await?)
    }

    /// [`DeadLetters::replay`] of each of `ids`, in one round trip: each
    /// move is atomic on its own, in order. Per id: the new task entry id,
    /// `None` where there was no such dead letter, or the error Redis gave
    /// for that entry alone (one that cannot be replayed does not stop the
    /// others).
    pub async fn replay_many(
        &self,
        agent_type: &AgentType,
        ids: &[String],
    ) -> Result<Vec<std::result::Result<Option<String>, String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let (dlq, tasks) = (self.keys.dlq(agent_type), self.keys.tasks(agent_type));
        let index = self.keys.dlq_index(agent_type);
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::REPLAY).ignore();
        for id in ids {
            pipe.invoke_script(scripts::REPLAY.key(&dlq).key(&tasks).key(&index).arg(id));
        }
        let replies: Vec<redis::RedisResult<Option<String>>> =
            pipe.ignore_errors().query_async(&mut conn).await?;
        Ok(replies
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect())
    }

    /// Deletes the given dead letters (and their index entries); returns
    /// how many existed.
    pub async fn purge(&self, agent_type: &AgentType, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        Ok(scripts::DLQ_DELETE
            .key(self.keys.dlq(agent_type))
            .key(self.keys.dlq_index(agent_type))
            .arg("ids")
            .arg(ids)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Deletes every dead letter of `agent_type` (and the whole index);
    /// returns how many there were.
    pub async fn purge_all(&self, agent_type: &AgentType) -> Result<u64> {
        let mut conn = self.conn.clone();
        let key = self.keys.dlq(agent_type);
        let (n, _, _): (u64, i64, i64) = redis::pipe()
            .atomic()
            .cmd("XLEN")
            .arg(&key)
            .cmd("DEL")
            .arg(&key)
            .cmd("DEL")
            .arg(self.keys.dlq_index(agent_type))
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }

    /// Adds `dead_letter` to `agent_type`'s DLQ as a new entry (its old
    /// entry id is not kept: ids are per stream), indexed by its task id.
    /// For moving dead letters between environments; returns the new entry id.
    pub async fn import(&self, agent_type: &AgentType, dead_letter: &DeadLetter) -> Result<String> {
        let mut conn = self.conn.clone();
        let mut inv = scripts::DLQ_ADD.prepare_invoke();
        inv.key(self.keys.dlq(agent_type))
            .key(self.keys.dlq_index(agent_type));
        for (k, v) in dead_letter.to_fields() {
            inv.arg(k).arg(v);
        }
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Deletes the dead letters of `agent_type` that were dead-lettered
    /// before `cutoff_ms` (by the Redis server's clock, which made their
    /// entry ids), with their index entries, a chunk per call; returns how
    /// many.
    pub async fn purge_older_than(&self, agent_type: &AgentType, cutoff_ms: u64) -> Result<u64> {
        // Chunks keep each script call short on a long DLQ.
        const CHUNK: usize = 1000;
        let mut conn = self.conn.clone();
        let (dlq, index) = (self.keys.dlq(agent_type), self.keys.dlq_index(agent_type));
        let before = format!("{cutoff_ms}-0");
        let mut total = 0;
        loop {
            let n: u64 = scripts::DLQ_DELETE
                .key(&dlq)
                .key(&index)
                .arg("before")
                .arg(&before)
                .arg(CHUNK)
                .invoke_async(&mut conn)
                .await?;
            total += n;
            if n < CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// The newest dead letter of task `task_id`, found through the dlq-index
    /// whatever the DLQ's length. An entry written before the index existed
    /// is looked for among the newest [`FIND_SCAN_BUDGET`] entries.
    pub async fn find_by_task(
        &self,
        agent_type: &AgentType,
        task_id: &str,
    ) -> Result<Option<DeadLetter>> {
        let mut conn = self.conn.clone();
        let key = self.keys.dlq(agent_type);
        let indexed: Option<String> = redis::cmd("HGET")
            .arg(self.keys.dlq_index(agent_type))
            .arg(task_id)
            .query_async(&mut conn)
            .await?;
        if let Some(id) = indexed {
            let found = range(&mut conn, &key, &id, &id, None).await?;
            if let Some(d) = found.first().map(to_dead_letter).transpose()?
                && d.task_id.as_deref() == Some(task_id)
            {
                return Ok(Some(d));
            }
        }
        // Newest first: a task's newest dead letter is the one to find.
        const CHUNK: usize = 500;
        let mut end = "+".to_owned();
        let mut scanned = 0;
        while scanned < FIND_SCAN_BUDGET {
            let v: redis::Value = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(&mut conn)
                .await?;
            let entries = parse_entries(v);
            scanned += entries.len();
            for e in &entries {
                let task = e.fields.iter().find(|(k, _)| k == schemas::fields::TASK_ID);
                if task.is_some_and(|(_, v)| v == task_id.as_bytes()) {
                    return to_dead_letter(e).map(Some);
                }
            }
            match entries.last() {
                Some(last) if entries.len() == CHUNK => end = format!("({}", last.id),
                _ => break,
            }
        }
        Ok(None)
    }

    /// The entry id of the newest dead letter of `agent_type`, if any.
    pub async fn newest_id(&self, agent_type: &AgentType) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let v: redis::Value = redis::cmd("XREVRANGE")
            .arg(self.keys.dlq(agent_type))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(parse_entries(v).into_iter().next().map(|e| e.id))
    }

    /// How many dead letters `agent_type` has.
    pub async fn count(&self, agent_type: &AgentType) -> Result<u64> {
        let mut conn = self.conn.clone();
        redis::cmd("XLEN")
            .arg(self.keys.dlq(agent_type))
            .query_async(&mut conn)
            .await
            .map_err(Error::from)
    }
}
