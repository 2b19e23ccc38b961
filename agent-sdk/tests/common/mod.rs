//! Helpers of the SDK's behaviour tests beyond the shared kits
//! (`agent_sdk::testing`, `fault_agent::testing`): the Redis clock, a direct
//! connection, and a proxy that loses replies.
#![allow(dead_code, clippy::unwrap_used)]

pub use agent_sdk::testing::*;
pub use fault_agent::testing::*;
use std::collections::BTreeSet;

/// The Redis server's clock (`TIME`), in microseconds since the Unix epoch:
/// the clock the delayed set and the retry schedule are kept in.
pub async fn redis_time_us(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    secs * 1_000_000 + micros
}

/// An async connection straight to the test Redis (not through any proxy).
pub async fn async_conn(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("async connection to the test redis")
}

/// A TCP proxy in front of Redis that loses the reply of each commit call
/// once: Redis runs the call, the worker never hears back.
///
/// It forwards both ways and keeps, per client connection, the queue of
/// requests waiting for their reply (Redis answers in order). The commit
/// script call is an `EVALSHA`/`EVAL` with the results stream key among its
/// arguments. The first time a given call (byte for byte) is answered with
/// anything but `-NOSCRIPT`, the proxy closes that client connection instead
/// of relaying the reply; when the worker sends the same call again (its
/// retry after reconnecting), the reply is relayed.
pub struct LostReplyProxy {
    pub port: u16,
    /// Commit replies dropped (the call ran, its reply was lost).
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Replies relayed to calls whose first reply was dropped (their retries).
    pub retries_answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

/// Per client connection: for each request sent on, in order, the request
/// bytes when it is a commit call.
type ReplyQueue = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Option<Vec<u8>>>>>;

impl LostReplyProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16, results_key: String) -> Self {
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dropped = Arc::new(AtomicUsize::new(0));
        let retries_answered = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<BTreeSet<Vec<u8>>>> = Arc::default();
        let results_key = Arc::new(results_key.into_bytes());
        let (d, r) = (dropped.clone(), retries_answered.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue; // the client sees its connection close and retries
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                tokio::spawn(Self::relay(
                    client,
                    server,
                    results_key.clone(),
                    seen.clone(),
                    d.clone(),
                    r.clone(),
                ));
            }
        });
        Self {
            port,
            dropped,
            retries_answered,
            accept,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn retries_answered(&self) -> usize {
        self.retries_answered
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn relay(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        results_key: std::sync::Arc<Vec<u8>>,
        seen: std::sync::Arc<std::sync::Mutex<BTreeSet<Vec<u8>>>>,
        dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        retries_answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client_r, mut client_w) = client.into_split();
        let (mut server_r, mut server_w) = server.into_split();
        let queue: ReplyQueue = std::sync::Arc::default();

        // Client → Redis: whole requests only, each queued before it is sent,
        // so its reply always finds it in the queue.
        let up_queue = queue.clone();
        let up = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match client_r.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut out = Vec::new();
                while let Some(len) = resp_frame_len(&buf) {
                    let frame: Vec<u8> = buf.drain(..len).collect();
                    let commit = is_commit_call(&frame, &results_key);
                    up_queue
                        .lock()
                        .unwrap()
                        .push_back(commit.then(|| frame.clone()));
                    out.extend_from_slice(&frame);
                }
                if !out.is_empty() && server_w.write_all(&out).await.is_err() {
                    return;
                }
            }
        });

        // Redis → client: whole replies, matched to their requests in order.
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match server_r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut out = Vec::new();
            let mut lose = false;
            while let Some(len) = resp_frame_len(&buf) {
                let frame: Vec<u8> = buf.drain(..len).collect();
                let request = queue.lock().unwrap().pop_front().flatten();
                if let Some(req) = request
                    && !frame.starts_with(b"-NOSCRIPT")
                {
                    if seen.lock().unwrap().insert(req) {
                        lose = true;
                        break;
                    }
                    retries_answered.fetch_add(1, Ordering::SeqCst);
                }
                out.extend_from_slice(&frame);
            }
            if !out.is_empty() && client_w.write_all(&out).await.is_err() {
                break;
            }
            if lose {
                // Count first: once the client sees the close it retries.
                dropped.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        // Closing both directions of the client connection (and the
        // connection to Redis with it) is what the client sees of a lost reply.
        up.abort();
        let _ = up.await;
        let _ = client_w.shutdown().await;
    }
}

impl Drop for LostReplyProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Whether `frame` (one whole request) calls a script with `results_key`
/// among its arguments: the commit script.
fn is_commit_call(frame: &[u8], results_key: &[u8]) -> bool {
    let args = resp_request_args(frame);
    matches!(args.first(), Some(cmd) if cmd.eq_ignore_ascii_case(b"EVALSHA") || cmd.eq_ignore_ascii_case(b"EVAL"))
        && args.contains(&results_key)
}

/// The arguments of a request (a RESP array of bulk strings).
fn resp_request_args(frame: &[u8]) -> Vec<&[u8]> {
    let mut args = Vec::new();
    let Some((head, mut at)) = resp_line(frame, 0) else {
        return args;
    };
    let n = head
        .strip_prefix(b"*")
        .and_then(resp_int)
        .unwrap_or_default();
    for _ in 0..n.max(0) {
        let Some((len, next)) = resp_line(frame, at) else {
            break;
        };
        let Some(len) = len.strip_prefix(b"$").and_then(resp_int) else {
            break;
        };
        let end = next + len.max(0) as usize;
        let Some(arg) = frame.get(next..end) else {
            break;
        };
        args.push(arg);
        at = end + 2;
    }
    args
}

/// The line starting at `at` (without its CRLF) and where the next one starts.
fn resp_line(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rel = b.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&b[at..at + rel], at + rel + 2))
}

fn resp_int(s: &[u8]) -> Option<i64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The length of the first frame (RESP2 or RESP3) of `b`, once it is whole.
fn resp_frame_len(b: &[u8]) -> Option<usize> {
    fn end_of(b: &[u8], at: usize) -> Option<usize> {
        let kind = *b.get(at)?;
        let (head, next) = resp_line(b, at + 1)?;
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(next),
            b'$' | b'!' | b'=' => match resp_int(head)? {
                n if n < 0 => Some(next),
                n => {
                    let end = next + n as usize + 2;
                    (b.len() >= end).then_some(end)
                }
            },
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = resp_int(head)?;
                let n = if matches!(kind, b'%' | b'|') {
                    n * 2
                } else {
                    n
                };
                let mut at = next;
                for _ in 0..n.max(0) {
                    at = end_of(b, at)?;
                }
                Some(at)
            }
            other => panic!("proxy: unknown RESP type byte {:?}", other as char),
        }
    }
    end_of(b, 0)
}
