//! Strict JSON helpers: maps that refuse duplicate keys (serde's derived structs already refuse
//! duplicate fields; maps would silently keep the last value), and size-checked decoding.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::Deserializer;

use crate::error::DecodeError;

/// `deserialize_with` for a `BTreeMap<String, String>` that refuses duplicate keys.
pub fn unique_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of strings without duplicate keys")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// Decodes a JSON message after checking its size against `limit`.
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Encodes a message as JSON. Our message types contain only strings, numbers, lists and
/// string-keyed maps, for which serialization cannot fail.
pub fn encode<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_default()
}
