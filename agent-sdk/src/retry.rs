//! The retry policy: how many attempts, how long between them, and the one
//! place where every handler result becomes exactly one disposition.
//!
//! The delay decided here is handed to `commit.lua` with the task's retry,
//! which schedules it at the Redis server's `TIME` + delay in the delayed
//! set; the promoter moves it back into the stream when due. No host's clock
//! is compared with another's.

use crate::{Error, Result};
use clap::Args;
use schemas::{DeadLetterReason, ErrorKind};
use std::time::Duration;

/// Attempts and backoff of a worker's tasks (flags of every agent binary).
#[derive(Debug, Clone, Copy, PartialEq, Args)]
pub struct RetryPolicy {
    /// Attempts per task before it is dead-lettered (a task may lower or raise it).
    #[arg(long, env = "AGENTIC_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// Delay before the first retry.
    #[arg(long, env = "AGENTIC_BACKOFF_INITIAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_initial: Duration,

    /// Longest delay between retries.
    #[arg(long, env = "AGENTIC_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,

    /// Factor by which the delay grows per attempt.
    #[arg(long, env = "AGENTIC_BACKOFF_MULTIPLIER", default_value_t = 2.0)]
    pub backoff_multiplier: f64,

    /// Random fraction taken off each delay (0 = none, 1 = anywhere in [0, delay]).
    #[arg(long, env = "AGENTIC_BACKOFF_JITTER", default_value_t = 0.2)]
    pub backoff_jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            backoff_multiplier: 2.0,
            backoff_jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Rejects inconsistent settings with a message naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if self.max_attempts == 0 {
            return bad("--max-attempts must be at least 1");
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return bad("--backoff-initial must be above 0 and at most --backoff-max");
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier <= 100.0) {
            return bad("--backoff-multiplier must be between 1 and 100");
        }
        if !(0.0..=1.0).contains(&self.backoff_jitter) {
            return bad("--backoff-jitter must be between 0 and 1");
        }
        Ok(())
    }

    /// Attempts allowed for a task that asks for `asked` (at least 1).
    pub fn attempts_for(&self, asked: Option<u32>) -> u32 {
        asked.unwrap_or(self.max_attempts).max(1)
    }

    /// The delay before attempt `attempt + 1`, after attempt `attempt`
    /// failed; `random` in [0, 1] picks the jitter.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = self
            .backoff_multiplier
            .powi(attempt.saturating_sub(1).min(1000) as i32);
        let base = (self.backoff_initial.as_secs_f64() * exp).min(self.backoff_max.as_secs_f64());
        // Jitter takes a random fraction off, so retries of many tasks that
        // failed together spread out instead of returning as one wave.
        Duration::from_secs_f64(base * (1.0 - self.backoff_jitter * random.clamp(0.0, 1.0)))
    }

    /// The disposition of a run that ended with `failure` (`None`: it
    /// succeeded) at attempt `attempt` of `max_attempts`.
    pub(crate) fn decide(
        &self,
        failure: Option<&Failure>,
        attempt: u32,
        max_attempts: u32,
        random: f64,
    ) -> Disposition {
        let Some(f) = failure else {
            return Disposition::Ack;
        };
        match f.kind {
            ErrorKind::Retryable | ErrorKind::Timeout | ErrorKind::Panic => {
                if attempt >= max_attempts {
                    Disposition::DeadLetter {
                        reason: DeadLetterReason::AttemptsExhausted,
                    }
                } else {
                    Disposition::Retry {
                        after: f.retry_after.unwrap_or_else(|| self.delay(attempt, random)),
                    }
                }
            }
            ErrorKind::Permanent | ErrorKind::InvalidInput => Disposition::DeadLetter {
                reason: DeadLetterReason::Permanent,
            },
            ErrorKind::Malformed => Disposition::DeadLetter {
                reason: DeadLetterReason::Malformed,
            },
            ErrorKind::MaxDeliveries => Disposition::DeadLetter {
                reason: DeadLetterReason::MaxDeliveries,
            },
        }
    }
}

/// A failed run, whatever the cause.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    pub(crate) details: Option<serde_json::Value>,
    pub(crate) retry_after: Option<Duration>,
}

/// What happens to a task after its handler ran.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Disposition {
    /// Publish the output, ack, delete.
    Ack,
    /// Schedule attempt + 1 after `after`, ack, delete.
    Retry { after: Duration },
    /// Into the DLQ, publish a `dead_lettered` result, ack, delete.
    DeadLetter { reason: DeadLetterReason },
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        backoff_multiplier: 2.0,
        backoff_jitter: 0.5,
    };

    fn fail(kind: ErrorKind) -> Failure {
        Failure {
            kind,
            message: "x".into(),
            details: None,
            retry_after: None,
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(P.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(P.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(P.delay(4, 0.0), Duration::from_secs(8));
        assert_eq!(P.delay(30, 0.0), Duration::from_secs(60));
        assert_eq!(P.delay(u32::MAX, 0.0), Duration::from_secs(60));
        assert_eq!(P.delay(2, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn every_outcome_has_one_disposition() {
        assert_eq!(P.decide(None, 1, 3, 0.0), Disposition::Ack);
        for kind in [ErrorKind::Retryable, ErrorKind::Timeout, ErrorKind::Panic] {
            assert_eq!(
                P.decide(Some(&fail(kind)), 1, 3, 0.0),
                Disposition::Retry {
                    after: Duration::from_secs(1)
                }
            );
            assert_eq!(
                P.decide(Some(&fail(kind)), 3, 3, 0.0),
                Disposition::DeadLetter {
                    reason: DeadLetterReason::AttemptsExhausted
                }
            );
        }
        for kind in [ErrorKind::Permanent, ErrorKind::InvalidInput] {
            assert_eq!(
                P.decide(Some(&fail(kind)), 1, 3, 0.0),
                Disposition::DeadLetter {
                    reason: DeadLetterReason::Permanent
                }
            );
        }
        let mut f = fail(ErrorKind::Retryable);
        f.retry_after = Some(Duration::from_millis(7));
        assert_eq!(
            P.decide(Some(&f), 1, 3, 0.0),
            Disposition::Retry {
                after: Duration::from_millis(7)
            }
        );
    }

    #[test]
    fn a_task_may_ask_for_its_own_attempts() {
        assert_eq!(P.attempts_for(None), 3);
        assert_eq!(P.attempts_for(Some(7)), 7);
        assert_eq!(P.attempts_for(Some(0)), 1);
    }
}
