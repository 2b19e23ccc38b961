//! The soak's reader of the standalone tasks' results: the application that
//! consumes them. It reads the results stream in its own consumer group the
//! whole run, records each result, then acknowledges and deletes it (as the
//! orchestrator does with the results it applies), so the stream stays small
//! and nothing is read twice or missed when the stream is trimmed.

use crate::fleet::{NS, TASK_TYPE};
use agent_sdk::schemas::{Keys, Namespace, fields};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

const GROUP: &str = "soak-account";

/// Task id → the statuses of the results published for it, in order.
pub(crate) type Seen = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

pub(crate) struct ResultsReader {
    pub(crate) seen: Seen,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ResultsReader {
    /// Creates the group (from the stream's start) and starts reading.
    pub(crate) async fn start(redis_url: &str) -> anyhow::Result<Self> {
        let keys = Keys::new(Namespace::new(NS)?);
        let stream = keys.results(&TASK_TYPE.parse()?);
        let client = redis::Client::open(redis_url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: redis::Value = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await?;
        let seen = Seen::default();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(read(conn, stream, seen.clone(), stop.clone()));
        Ok(Self { seen, stop, handle })
    }

    /// Stops reading; an error if reading failed.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await?
    }
}

async fn read(
    mut conn: redis::aio::MultiplexedConnection,
    stream: String,
    seen: Seen,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        // Not a blocking read: the connection is shared with nothing, but
        // a short poll keeps the stop prompt without a second connection.
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("soak")
            .arg("COUNT")
            .arg(500)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if entries.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
            continue;
        }
        let mut ids = Vec::with_capacity(entries.len());
        {
            let mut seen = seen.lock().expect("seen");
            for e in entries {
                let text = |name: &str| {
                    e.map
                        .get(name)
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                        .unwrap_or_default()
                };
                seen.entry(text(fields::TASK_ID))
                    .or_default()
                    .push(text(fields::STATUS));
                ids.push(e.id);
            }
        }
        let _: () = redis::pipe()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&ids)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(&ids)
            .ignore()
            .query_async(&mut conn)
            .await?;
    }
}
