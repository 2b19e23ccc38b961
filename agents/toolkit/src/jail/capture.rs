//! The output of a jailed run, kept within a byte budget: the first bytes
//! and the last ones, never more, whatever the program prints (a suite
//! printing 100 MB must not become 100 MB in memory or in a result).

use std::collections::VecDeque;

/// What is kept of a stream of output.
#[derive(Debug)]
pub(crate) struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl Capture {
    /// Keeps at most `cap` bytes: an eighth from the start (how the run
    /// began), the rest from the end (where runners print their summary).
    pub(crate) fn new(cap: usize) -> Self {
        let head_cap = cap / 8;
        Self {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap: cap - head_cap,
            total: 0,
        }
    }

    pub(crate) fn push(&mut self, mut buf: &[u8]) {
        self.total += buf.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let n = room.min(buf.len());
            self.head.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
        }
        if buf.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&buf[buf.len() - self.tail_cap..]);
            return;
        }
        let over = (self.tail.len() + buf.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..over);
        self.tail.extend(buf);
    }

    /// The text kept, the bytes seen in all, and whether some were dropped
    /// (then the text says how many, where they were).
    pub(crate) fn finish(self) -> (String, u64, bool) {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let dropped = self.total - kept;
        let mut bytes = self.head;
        if dropped > 0 {
            bytes.extend_from_slice(
                format!("\n[... {dropped} bytes of output dropped: the jail keeps the first and last bytes only ...]\n")
                    .as_bytes(),
            );
        }
        bytes.extend(self.tail);
        (
            String::from_utf8_lossy(&bytes).into_owned(),
            self.total,
            dropped > 0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_start_and_the_end_and_says_what_was_dropped() {
        let mut c = Capture::new(80);
        c.push(b"0123456789");
        c.push(&[b'x'; 1000]);
        c.push(b"the end\n");
        let (text, total, truncated) = c.finish();
        assert_eq!(total, 1018);
        assert!(truncated);
        assert!(text.starts_with("0123456789"), "{text}");
        assert!(text.ends_with("xxthe end\n"), "{text}");
        assert!(text.contains("[... 938 bytes of output dropped"), "{text}");

        let mut c = Capture::new(80);
        c.push(b"short");
        assert_eq!(c.finish(), ("short".to_owned(), 5, false));
    }

    #[test]
    fn a_tail_of_huge_lines_stays_small() {
        let mut c = Capture::new(256 * 1024);
        c.push("é".repeat(200_000).as_bytes());
        let (output, output_bytes, output_truncated) = c.finish();
        let run = super::super::RunOutput {
            success: true,
            timed_out: false,
            code: Some(0),
            output,
            output_bytes,
            output_truncated,
            limits: super::super::Enforcement {
                jail: "bwrap".into(),
                uid: 65534,
                memory: "cgroup".into(),
                pids: "cgroup".into(),
                cpu: "rlimit".into(),
                file_size: "rlimit".into(),
                output: "capture".into(),
            },
            limits_hit: vec!["output".into()],
        };
        let tail = run.tail(40);
        assert!(tail.len() <= super::super::TAIL_BYTES + 6, "{}", tail.len());
        assert!(tail.starts_with("[...] é"), "{}", &tail[..20]);
    }
}
