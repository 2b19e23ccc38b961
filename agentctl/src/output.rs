//! How `agentctl` prints: aligned tables and short ages for people, one
//! JSON document for scripts, errors on stderr.

use super::ExitStatus;
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where results go.
#[derive(Debug, Clone)]
pub struct Out {
    json: bool,
    /// Whether a JSON document went to stdout already (there is one per run).
    printed: Arc<AtomicBool>,
}

impl Out {
    /// Tables when `json` is false.
    pub fn new(json: bool) -> Self {
        Self {
            json,
            printed: Arc::default(),
        }
    }

    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints `value` as JSON (pretty; one document).
    pub fn print_json<T: Serialize>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(s) => {
                self.printed.store(true, Ordering::Relaxed);
                println!("{s}");
            }
            Err(e) => eprintln!("agentctl: cannot encode the answer as JSON: {e}"),
        }
    }

    /// Prints `value` as JSON with `--json`, else calls `human`.
    pub fn show<T: Serialize>(&self, value: &T, human: impl FnOnce()) {
        if self.json {
            self.print_json(value);
        } else {
            human();
        }
    }

    /// A line for people on stderr (progress, summaries beside JSON).
    pub fn note(&self, line: &str) {
        eprintln!("{line}");
    }

    /// Reports an error: a JSON object on stdout with `--json` unless the
    /// command printed its answer already (so scripts read one document
    /// either way), and a line on stderr always.
    pub fn error(&self, e: &ExitStatus) {
        if self.json && !self.printed.load(Ordering::Relaxed) {
            self.print_json(&serde_json::json!({
                "error": { "exit_code": e.code(), "message": e.to_string() }
            }));
        }
        eprintln!("agentctl: {e}");
    }
}

/// A table printed with aligned columns.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per header); control characters in cells are
    /// made harmless ([`clean`]).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    /// Prints it to stdout; `empty` instead when it has no rows.
    pub fn print(&self, empty: &str) {
        if self.rows.is_empty() {
            println!("{empty}");
            return;
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let stdout = std::io::stdout();
        let mut o = stdout.lock();
        let line = |cells: &mut dyn Iterator<Item = &str>, o: &mut std::io::StdoutLock<'_>| {
            let mut s = String::new();
            for (i, (c, w)) in cells.zip(&widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(c);
                s.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(c.chars().count()),
                ));
            }
            let _ = writeln!(o, "{}", s.trim_end());
        };
        line(&mut self.headers.iter().copied(), &mut o);
        for r in &self.rows {
            line(&mut r.iter().map(String::as_str), &mut o);
        }
    }
}

/// `ms` as a short age: `4s`, `12m`, `3h`, `2d`.
pub fn short(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long ago `at_ms` was, as `4s ago`; `-` when unknown.
pub fn ago(at_ms: Option<u64>) -> String {
    at_ms.map_or_else(
        || "-".to_owned(),
        |t| {
            format!(
                "{} ago",
                short(agent_sdk::clock::now_ms().saturating_sub(t))
            )
        },
    )
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
const LAST_RFC3339_MS: u64 = 253_402_300_799_999;

/// `at_ms` as an RFC 3339 time (UTC, seconds). A time past the year 9999
/// (only a forged entry has one) is shown as its number.
pub fn time(at_ms: u64) -> String {
    if at_ms > LAST_RFC3339_MS {
        return format!("{at_ms} ms");
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(at_ms))
        .to_string()
}

/// `s` cut to `max` characters, with `…` when cut; one line.
pub fn clip(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `s` safe to print on a terminal: control characters (escape sequences
/// that could rewrite the screen or the window title) shown as `�`. Dead
/// letters carry text any producer wrote.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// An optional value, or `-`.
pub fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_9999_do_not_panic() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(u64::MAX), format!("{} ms", u64::MAX));
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(short(4_000), "4s");
        assert_eq!(short(12 * 60_000), "12m");
        assert_eq!(short(3 * 3_600_000), "3h");
        assert_eq!(short(2 * 86_400_000), "2d");
    }

    #[test]
    fn clean_defuses_escape_sequences() {
        assert_eq!(clean("a\u{1b}]0;pwned\u{7}b"), "a\u{fffd}]0;pwned\u{fffd}b");
        assert_eq!(clean("plain ✓"), "plain ✓");
    }

    #[test]
    fn clip_cuts_and_flattens() {
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
