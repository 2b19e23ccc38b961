//! The listings of workflows: `N:wfs:all` and `N:wfs:active` (sorted sets by
//! creation time), and the headline fields read from workflow hashes.

use super::{Result, WorkflowStore};
use crate::error::Error;
use crate::machine::WorkflowStatus;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

/// A workflow's headline fields, read without decoding its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "utoipa", schema(as = WorkflowSummary))]
pub struct Summary {
    /// Workflow id.
    pub id: String,
    /// Definition name.
    pub definition: String,
    /// Where it stands.
    pub status: WorkflowStatus,
    /// Transitions stored.
    pub version: u64,
    /// Created (ms).
    pub created_at_ms: u64,
    /// Last transition (ms).
    pub updated_at_ms: u64,
}

/// Filters and paging of [`WorkflowStore::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only workflows with this status.
    pub status: Option<WorkflowStatus>,
    /// Only workflows of this definition.
    pub definition: Option<String>,
    /// Newest first; start after this cursor (from the previous page).
    pub cursor: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// One page of [`WorkflowStore::list`].
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "utoipa", schema(as = WorkflowPage))]
pub struct Page {
    /// The workflows, newest first.
    pub items: Vec<Summary>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl WorkflowStore {
    /// Adds `id` to the listing and the active index. Runs before the
    /// workflow is first stored: a crash in between leaves an index entry
    /// without a workflow, which readers skip and the sweeper prunes, never a
    /// workflow nobody can find.
    pub async fn index<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: &str,
        created_ms: u64,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        self.add_index_commands(&mut pipe, id, created_ms);
        pipe.query_async::<()>(conn).await?;
        Ok(())
    }

    /// The commands of [`WorkflowStore::index`], added to `pipe` (replies
    /// ignored). `NX`: an id that exists keeps its place.
    pub fn add_index_commands(&self, pipe: &mut redis::Pipeline, id: &str, created_ms: u64) {
        for key in [self.keys.workflows_all(), self.keys.workflows_active()] {
            pipe.cmd("ZADD")
                .arg(key)
                .arg("NX")
                .arg(created_ms)
                .arg(id)
                .ignore();
        }
    }

    /// Drops `id` from the active index (it ended).
    pub async fn deactivate<C: ConnectionLike + Send>(&self, conn: &mut C, id: &str) -> Result<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.workflows_active())
            .arg(id)
            .query_async(conn)
            .await?;
        Ok(())
    }

    /// Drops `id` from both indexes (its hash is gone).
    pub async fn unindex<C: ConnectionLike + Send>(&self, conn: &mut C, id: &str) -> Result<()> {
        redis::pipe()
            .zrem(self.keys.workflows_all(), id)
            .ignore()
            .zrem(self.keys.workflows_active(), id)
            .ignore()
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }

    /// Active workflow ids after `after` (by creation time, then id), at
    /// most `count`, with their creation time.
    pub async fn active_page<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(String, u64)>> {
        let v: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(self.keys.workflows_active())
            .arg(offset)
            .arg(offset + count.max(1) - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        Ok(v)
    }

    /// Headline fields of `ids` (one round trip); `None` where the workflow
    /// does not exist.
    pub async fn summaries<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        ids: &[String],
    ) -> Result<Vec<Option<Summary>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(self.keys.workflow(id)?).arg(&[
                "definition",
                "status",
                "version",
                "created_at_ms",
                "updated_at_ms",
            ]);
        }
        type Row = (
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        );
        let rows: Vec<Row> = pipe.query_async(conn).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .map(|(id, (def, status, version, created, updated))| {
                Some(Summary {
                    id: id.clone(),
                    definition: def?,
                    status: WorkflowStatus::parse(&status?)?,
                    version: version?,
                    created_at_ms: created.unwrap_or(0),
                    updated_at_ms: updated.unwrap_or(0),
                })
            })
            .collect())
    }

    /// Workflows newest first, filtered, one page at a time. The cursor is
    /// `<created ms>:<id>` of the last workflow looked at; filters are
    /// applied while scanning, at most a bounded number of ids per call (a
    /// page may then come back short, with a cursor to go on).
    pub async fn list<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        filter: &ListFilter,
    ) -> Result<Page> {
        const BATCH: usize = 200;
        let limit = filter.limit.clamp(1, 1000);
        let scan_budget = (limit * 20).max(2000);
        let cursor: Option<(u64, String)> = match &filter.cursor {
            Some(c) => {
                let bad = || Error::Invalid(format!("bad cursor {c:?}"));
                let (ms, id) = c.split_once(':').ok_or_else(bad)?;
                Some((ms.parse().map_err(|_| bad())?, id.to_owned()))
            }
            None => None,
        };
        let max = cursor
            .as_ref()
            .map_or_else(|| "+inf".to_owned(), |(ms, _)| ms.to_string());
        let mut items = Vec::new();
        let mut scanned = 0;
        let mut offset = 0;
        loop {
            let page: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(self.keys.workflows_all())
                .arg(&max)
                .arg("-inf")
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(offset)
                .arg(BATCH)
                .arg("WITHSCORES")
                .query_async(conn)
                .await?;
            let done = page.len() < BATCH;
            offset += page.len();
            let last = page.last().cloned();
            // Ids of the cursor's millisecond come in reverse lexical order:
            // those not below the cursor's id were on earlier pages.
            let fresh: Vec<(String, u64)> = page
                .into_iter()
                .filter(|(id, score)| {
                    cursor
                        .as_ref()
                        .is_none_or(|(cs, cid)| *score != *cs || id.as_str() < cid.as_str())
                })
                .collect();
            scanned += fresh.len();
            let ids: Vec<String> = fresh.iter().map(|(i, _)| i.clone()).collect();
            for ((id, score), s) in fresh.iter().zip(self.summaries(conn, &ids).await?) {
                let Some(s) = s else { continue };
                if filter.status.is_some_and(|st| st != s.status)
                    || filter
                        .definition
                        .as_ref()
                        .is_some_and(|d| *d != s.definition)
                {
                    continue;
                }
                items.push(s);
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        next: Some(format!("{score}:{id}")),
                    });
                }
            }
            if done {
                return Ok(Page { items, next: None });
            }
            if scanned >= scan_budget {
                return Ok(Page {
                    items,
                    next: last.map(|(id, score)| format!("{score}:{id}")),
                });
            }
        }
    }
}
