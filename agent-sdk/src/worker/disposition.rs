//! Every handler result becomes exactly one disposition, decided here.

use schemas::{DeadLetterReason, ErrorKind};
use std::time::Duration;

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

/// Exponential backoff with jitter for retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) multiplier: f64,
    pub(crate) jitter: f64,
}

impl Backoff {
    /// The delay before attempt `attempt + 1`, after attempt `attempt` failed.
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(1000) as i32);
        let base = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        // Jitter takes a random fraction off, so retries of many tasks that
        // failed together spread out instead of returning as one wave.
        Duration::from_secs_f64(base * (1.0 - self.jitter * random.clamp(0.0, 1.0)))
    }
}

/// Decides the disposition of a run.
pub(crate) fn decide(
    failure: Option<&Failure>,
    attempt: u32,
    max_attempts: u32,
    backoff: &Backoff,
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
                    after: f
                        .retry_after
                        .unwrap_or_else(|| backoff.delay(attempt, random)),
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

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        multiplier: 2.0,
        jitter: 0.5,
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
        assert_eq!(B.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(B.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(B.delay(4, 0.0), Duration::from_secs(8));
        assert_eq!(B.delay(30, 0.0), Duration::from_secs(60));
        assert_eq!(B.delay(u32::MAX, 0.0), Duration::from_secs(60));
        assert_eq!(B.delay(2, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn every_outcome_has_one_disposition() {
        assert_eq!(decide(None, 1, 3, &B, 0.0), Disposition::Ack);
        for kind in [ErrorKind::Retryable, ErrorKind::Timeout, ErrorKind::Panic] {
            assert_eq!(
                decide(Some(&fail(kind)), 1, 3, &B, 0.0),
                Disposition::Retry {
                    after: Duration::from_secs(1)
                }
            );
            assert_eq!(
                decide(Some(&fail(kind)), 3, 3, &B, 0.0),
                Disposition::DeadLetter {
                    reason: DeadLetterReason::AttemptsExhausted
                }
            );
        }
        for kind in [ErrorKind::Permanent, ErrorKind::InvalidInput] {
            assert_eq!(
                decide(Some(&fail(kind)), 1, 3, &B, 0.0),
                Disposition::DeadLetter {
                    reason: DeadLetterReason::Permanent
                }
            );
        }
        let mut f = fail(ErrorKind::Retryable);
        f.retry_after = Some(Duration::from_millis(7));
        assert_eq!(
            decide(Some(&f), 1, 3, &B, 0.0),
            Disposition::Retry {
                after: Duration::from_millis(7)
            }
        );
    }
}
