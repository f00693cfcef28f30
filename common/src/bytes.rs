//! [`Bytes`]: file contents that keep every byte on every path — a CBOR byte
//! string on the fleet link, base64 text in JSON and YAML (the agent's local
//! cache, a static pod's `binaryData`), as Kubernetes writes a ConfigMap's
//! `binaryData` and a Secret's `data`.
//!
//! The choice follows the format's `is_human_readable()`: ciborium answers
//! false, serde_json and serde_yaml_ng true. (`serde_bytes` would cover the
//! CBOR half only: it writes JSON as an array of numbers.)

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Arbitrary bytes (not necessarily UTF-8).
#[derive(Clone, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

/// The length only: these are often Secret contents, and Debug output ends
/// up in logs.
impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&STANDARD.encode(&self.0)) } else { s.serialize_bytes(&self.0) }
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("base64 text or a byte string")
    }

    /// Base64 as Go's `encoding/base64` reads Kubernetes' `[]byte` fields:
    /// standard alphabet, padded, line breaks ignored (a YAML block scalar).
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        let decoded =
            if v.contains(['\n', '\r']) { STANDARD.decode(v.replace(['\n', '\r'], "")) } else { STANDARD.decode(v) };
        decoded.map(Bytes).map_err(|e| E::custom(format_args!("invalid base64: {e}")))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes(v))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        if d.is_human_readable() { d.deserialize_str(BytesVisitor) } else { d.deserialize_byte_buf(BytesVisitor) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value, and sequences that are not UTF-8.
    fn awkward() -> Bytes {
        let mut v: Vec<u8> = (0..=255).collect();
        v.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0xf8]);
        Bytes(v)
    }

    #[test]
    fn cbor_carries_a_byte_string_byte_for_byte() {
        let b = awkward();
        let mut out = Vec::new();
        ciborium::into_writer(&b, &mut out).expect("encode");
        // Major type 2 (byte string), 2-byte length: no per-byte overhead.
        assert_eq!(out[0], 0x40 | 25, "a CBOR byte string, not an array or text");
        assert_eq!(out.len(), b.0.len() + 3);
        let back: Bytes = ciborium::from_reader(out.as_slice()).expect("decode");
        assert_eq!(back.0, b.0);
    }

    #[test]
    fn json_carries_base64_byte_for_byte() {
        let b = awkward();
        let json = serde_json::to_string(&b).expect("encode");
        assert_eq!(json, format!("\"{}\"", STANDARD.encode(&b.0)));
        let back: Bytes = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.0, b.0);
        let v: Bytes = serde_json::from_value(serde_json::json!("AP8=")).expect("from a Value");
        assert_eq!(v.0, [0x00, 0xff]);
    }

    #[test]
    fn base64_may_be_wrapped_but_not_invalid() {
        let wrapped: Bytes = serde_json::from_str("\"AAEC\\nAwQF\\r\\n\"").expect("line breaks ignored");
        assert_eq!(wrapped.0, [0, 1, 2, 3, 4, 5]);
        let err = serde_json::from_str::<Bytes>("\"not base64!\"").expect_err("invalid");
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }

    #[test]
    fn debug_does_not_show_the_contents() {
        assert_eq!(format!("{:?}", Bytes(b"hunter2".to_vec())), "Bytes(7 bytes)");
    }
}
