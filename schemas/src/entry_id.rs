//! Stream entry ids (`<ms>-<seq>`): the one check of ids that operators,
//! API callers and scripts' replies hand us, and their order.

use std::fmt;

/// A stream entry id, ordered as Redis orders them (by time, then sequence),
/// which is not the order of their text (`"9-0" > "10-0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// Milliseconds part: when the entry was added (the Redis server's clock).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EntryId {
    /// Parses `ms-seq`, both parts decimal digits only (no sign, no `*`, no
    /// special ids such as `-`, `+` or `$`); `None` when it is not one.
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The millisecond part of `id`, when it is an entry id.
    pub fn ms_of(id: &str) -> Option<u64> {
        Self::parse(id).map(|e| e.ms)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_give_their_time_and_order() {
        assert_eq!(EntryId::ms_of("1763900000000-3"), Some(1_763_900_000_000));
        assert_eq!(EntryId::ms_of("x-1"), None);
        assert_eq!(EntryId::parse("12-3"), Some(EntryId { ms: 12, seq: 3 }));
        assert!(EntryId::parse("9-0") < EntryId::parse("10-0"));
        assert_eq!(EntryId::parse("12-3").unwrap().to_string(), "12-3");
        for bad in [
            "12",
            "12-",
            "-3",
            "+1-0",
            "1-x",
            "1-0-0",
            "99999999999999999999999-0",
        ] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
    }
}
