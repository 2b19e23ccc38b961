//! Encodings of the `body` field.
//!
//! MessagePack (`rmp-serde`, structs as maps so other languages read field
//! names) is what the runtime writes. JSON is accepted on input so a task can
//! be enqueued from `redis-cli` or any language: the two are told apart by the
//! first byte — a JSON envelope is an object and starts with `{` (possibly
//! after whitespace), which in MessagePack would be the integer 123 and never
//! a valid envelope.

use crate::{Error, Result};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt;

/// The encoding of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// MessagePack with named fields. The default.
    #[default]
    MsgPack,
    /// JSON (UTF-8).
    Json,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MsgPack => "msgpack",
            Self::Json => "json",
        })
    }
}

impl Encoding {
    /// Tells the encoding of `bytes` from its first non-whitespace byte.
    pub fn sniff(bytes: &[u8]) -> Self {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Self::Json,
            _ => Self::MsgPack,
        }
    }

    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Self::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| Error::Encode {
                encoding: self,
                message: e.to_string(),
            }),
            Self::Json => serde_json::to_vec(value).map_err(|e| Error::Encode {
                encoding: self,
                message: e.to_string(),
            }),
        }
    }

    /// Decodes `bytes` as this encoding, within `limits`.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8], limits: DecodeLimits) -> Result<T> {
        if bytes.len() > limits.max_bytes {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: limits.max_bytes,
            });
        }
        let err = |message: String| Error::Decode {
            encoding: self,
            message,
        };
        match self {
            Self::MsgPack => {
                // A `&[u8]` reader advances as it reads, so what is left after the
                // value is exactly the trailing bytes.
                let mut de = rmp_serde::Deserializer::new(bytes);
                // rmp-serde refuses the level at which its counter reaches
                // zero: a counter of `max_depth + 1` admits `max_depth`
                // levels, the same count as the JSON check below.
                de.set_max_depth(limits.max_depth.saturating_add(1));
                let value = T::deserialize(&mut de).map_err(|e| err(e.to_string()))?;
                // Trailing bytes mean the producer and we disagree on framing:
                // refuse rather than silently drop them.
                if de.into_inner().is_empty() {
                    Ok(value)
                } else {
                    Err(err("trailing bytes after the value".into()))
                }
            }
            // serde_json stops at 128 levels on its own; the same limit as
            // MessagePack is checked first so both encodings agree.
            Self::Json => {
                crate::limits::check_json_depth("the body", bytes, limits.max_depth)
                    .map_err(|e| err(e.to_string()))?;
                serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))
            }
        }
    }
}

/// Limits applied before and while decoding untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest body accepted, in bytes; checked before decoding.
    pub max_bytes: usize,
    /// Deepest nesting of arrays and maps accepted, the outermost counting
    /// as 1 (rmp-serde allows 1024 by default, serde_json 128).
    pub max_depth: usize,
}

impl Default for DecodeLimits {
    /// [`limits::MAX_BODY_BYTES`](crate::limits::MAX_BODY_BYTES) and
    /// [`limits::MAX_DEPTH`](crate::limits::MAX_DEPTH): what the API accepts.
    fn default() -> Self {
        Self {
            max_bytes: crate::limits::MAX_BODY_BYTES,
            max_depth: crate::limits::MAX_DEPTH,
        }
    }
}

/// Decodes `bytes` in whichever encoding it is in; returns the encoding too.
pub fn decode_any<T: DeserializeOwned>(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<(T, Encoding)> {
    let enc = Encoding::sniff(bytes);
    enc.decode(bytes, limits).map(|v| (v, enc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskEnvelope;
    use serde_json::{Value, json};

    #[test]
    fn round_trips_both_encodings() {
        let env = TaskEnvelope::new("t1", json!({"n": 1, "s": "x"}));
        for enc in [Encoding::MsgPack, Encoding::Json] {
            let bytes = enc.encode(&env).unwrap();
            assert_eq!(Encoding::sniff(&bytes), enc);
            let (back, got): (TaskEnvelope, _) =
                decode_any(&bytes, DecodeLimits::default()).unwrap();
            assert_eq!(got, enc);
            assert_eq!(back, env);
        }
    }

    #[test]
    fn json_typed_by_hand_is_accepted() {
        let raw = br#"  {"v":1,"id":"hello-1","input":{"name":"world"}}"#;
        let (env, enc): (TaskEnvelope, _) = decode_any(raw, DecodeLimits::default()).unwrap();
        assert_eq!(enc, Encoding::Json);
        assert_eq!(env.id, "hello-1");
        assert_eq!(env.input["name"], "world");
    }

    #[test]
    fn refuses_oversized_before_decoding() {
        let limits = DecodeLimits {
            max_bytes: 8,
            max_depth: 64,
        };
        let err = decode_any::<Value>(b"{\"aaaaaaaaaa\":1}", limits).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { size: 16, limit: 8 }),
            "{err}"
        );
    }

    #[test]
    fn refuses_deep_msgpack() {
        // 100 nested one-element arrays: 0x91 … 0x91 0x01.
        let mut bytes = vec![0x91u8; 100];
        bytes.push(0x01);
        let err = decode_any::<Value>(&bytes, DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("depth"), "{err}");
        let shallow = DecodeLimits {
            max_bytes: 1 << 20,
            max_depth: 200,
        };
        assert!(decode_any::<Value>(&bytes, shallow).is_ok());
    }

    #[test]
    fn both_encodings_accept_exactly_max_depth_levels() {
        let nested = |levels: usize| -> Value {
            let text = format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
            serde_json::from_str(&text).unwrap()
        };
        let limits = DecodeLimits::default();
        for enc in [Encoding::MsgPack, Encoding::Json] {
            // An envelope is one level: its input may nest one less.
            let at = TaskEnvelope::new("t", nested(limits.max_depth - 1));
            let bytes = enc.encode(&at).unwrap();
            let back: TaskEnvelope = enc.decode(&bytes, limits).unwrap();
            assert_eq!(back, at, "{enc}");
            let over = TaskEnvelope::new("t", nested(limits.max_depth));
            let bytes = enc.encode(&over).unwrap();
            let err = enc.decode::<TaskEnvelope>(&bytes, limits).unwrap_err();
            assert!(err.to_string().contains("depth"), "{enc}: {err}");
        }
    }

    #[test]
    fn refuses_garbage_and_trailing_bytes() {
        assert!(decode_any::<TaskEnvelope>(b"\xc1\xc1\xc1", DecodeLimits::default()).is_err());
        let mut bytes = Encoding::MsgPack
            .encode(&TaskEnvelope::new("t", 1))
            .unwrap();
        bytes.push(0);
        assert!(decode_any::<TaskEnvelope>(&bytes, DecodeLimits::default()).is_err());
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        // An array header declaring 2^32-1 elements followed by nothing.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(decode_any::<Vec<u64>>(&bytes, DecodeLimits::default()).is_err());
        let map = [0xdf, 0xff, 0xff, 0xff, 0xff];
        assert!(
            decode_any::<std::collections::HashMap<String, u8>>(&map, DecodeLimits::default())
                .is_err()
        );
    }
}
