//! The versioned CBOR envelope every controller⇄agent payload travels in
//! (design.md §3): `{v: major version, body}`, with a size cap checked before
//! any decoding work is done.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Major protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default payload cap (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("payload of {size} bytes exceeds the cap of {cap} bytes")]
    TooLarge { size: usize, cap: usize },
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnknownVersion(u32),
    #[error("malformed cbor payload: {0}")]
    Decode(String),
    #[error("cannot encode payload: {0}")]
    Encode(String),
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    body: T,
    /// Reserved for signed desired state (not produced or checked yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Encodes `body` into a version-1 envelope.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::new();
    ciborium::into_writer(&Envelope { v: PROTOCOL_VERSION, body, sig: None }, &mut out)
        .map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes an envelope, refusing oversize payloads and unknown major versions
/// before looking at the body.
pub fn decode<T: DeserializeOwned>(payload: &[u8], cap: usize) -> Result<T, EnvelopeError> {
    if payload.len() > cap {
        return Err(EnvelopeError::TooLarge { size: payload.len(), cap });
    }
    let head: VersionOnly = ciborium::from_reader(payload).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
    if head.v != PROTOCOL_VERSION {
        return Err(EnvelopeError::UnknownVersion(head.v));
    }
    let env: Envelope<T> = ciborium::from_reader(payload).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
    Ok(env.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        generation: u64,
        pods: Vec<String>,
    }

    #[test]
    fn round_trip() {
        let s = Sample { generation: 7, pods: vec!["a".into(), "b".into()] };
        let bytes = encode(&s).expect("encode");
        let back: Sample = decode(&bytes, DEFAULT_MAX_PAYLOAD).expect("decode");
        assert_eq!(back, s);
    }

    #[test]
    fn rejects_garbage_truncation_size_and_version() {
        let s = Sample { generation: 1, pods: vec!["x".into()] };
        let bytes = encode(&s).expect("encode");
        assert!(matches!(decode::<Sample>(b"\xff\x00garbage", 1024), Err(EnvelopeError::Decode(_))));
        assert!(matches!(decode::<Sample>(&bytes[..bytes.len() - 2], 1024), Err(EnvelopeError::Decode(_))));
        assert!(matches!(decode::<Sample>(&bytes, 4), Err(EnvelopeError::TooLarge { .. })));
        let mut v2 = Vec::new();
        ciborium::into_writer(&Envelope { v: 2, body: &s, sig: None }, &mut v2).expect("encode");
        assert!(matches!(decode::<Sample>(&v2, 1024), Err(EnvelopeError::UnknownVersion(2))));
    }
}
