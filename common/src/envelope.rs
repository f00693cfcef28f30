//! The versioned CBOR envelope every controller⇄agent payload travels in
//! (design.md §3), with a size cap checked before any decoding work is done.
//!
//! Version 2: `{v: 2, body: bstr, sig?: bstr}` — the body is the CBOR of
//! the message as a byte string, so a signature covers exactly the bytes
//! that were sent (no re-encoding to check it). Version 1 carried the body
//! inline and no signature; it is still read where no signature is asked
//! for (an agent's cache written by an older build), never produced.

use ciborium::Value;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::sign::{PublicKey, Purpose, SignError, SigningKey};

/// Major protocol version this build writes.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version it still reads (unsigned, inline body).
const OLDEST_READ: u32 = 1;
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
    #[error("unsigned {} message (the controller signs every one)", .0.as_str())]
    Unsigned(Purpose),
    #[error("{} message: {source}", .purpose.as_str())]
    Signature { purpose: Purpose, source: SignError },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    /// v2: `Value::Bytes` (the body's CBOR); v1: the body itself.
    body: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<Value>,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

fn cbor<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    Ok(out)
}

fn wrap(body: Vec<u8>, sig: Option<Vec<u8>>) -> Result<Vec<u8>, EnvelopeError> {
    cbor(&Envelope { v: PROTOCOL_VERSION, body: Value::Bytes(body), sig: sig.map(Value::Bytes) })
}

/// Encodes `body` into an unsigned envelope.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, EnvelopeError> {
    wrap(cbor(body)?, None)
}

/// Encodes `body` into an envelope signed by `key` for `purpose`.
pub fn encode_signed<T: Serialize>(body: &T, purpose: Purpose, key: &SigningKey) -> Result<Vec<u8>, EnvelopeError> {
    let bytes = cbor(body)?;
    let sig = key.sign(purpose, &bytes);
    wrap(bytes, Some(sig))
}

/// The envelope of a payload within `cap` and of a version this build reads.
fn open(payload: &[u8], cap: usize) -> Result<Envelope, EnvelopeError> {
    if payload.len() > cap {
        return Err(EnvelopeError::TooLarge { size: payload.len(), cap });
    }
    let head: VersionOnly = ciborium::from_reader(payload).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
    if !(OLDEST_READ..=PROTOCOL_VERSION).contains(&head.v) {
        return Err(EnvelopeError::UnknownVersion(head.v));
    }
    ciborium::from_reader(payload).map_err(|e| EnvelopeError::Decode(e.to_string()))
}

fn body<T: DeserializeOwned>(env: Envelope) -> Result<T, EnvelopeError> {
    match (env.v, env.body) {
        (PROTOCOL_VERSION, Value::Bytes(b)) => {
            ciborium::from_reader(b.as_slice()).map_err(|e| EnvelopeError::Decode(e.to_string()))
        }
        (PROTOCOL_VERSION, _) => Err(EnvelopeError::Decode("the body is not a byte string".into())),
        (_, inline) => inline.deserialized().map_err(|e| EnvelopeError::Decode(e.to_string())),
    }
}

/// Decodes an envelope, refusing oversize payloads and unknown major versions
/// before looking at the body. A signature, if any, is not checked: this is
/// for what needs none (reports, and what this node stored itself).
pub fn decode<T: DeserializeOwned>(payload: &[u8], cap: usize) -> Result<T, EnvelopeError> {
    body(open(payload, cap)?)
}

/// Decodes an envelope that must carry `key`'s signature for `purpose`:
/// unsigned, mis-signed or otherwise-signed payloads are refused before
/// their body is decoded.
pub fn decode_verified<T: DeserializeOwned>(
    payload: &[u8],
    cap: usize,
    purpose: Purpose,
    key: &PublicKey,
) -> Result<T, EnvelopeError> {
    let env = open(payload, cap)?;
    let (Value::Bytes(bytes), Some(Value::Bytes(sig))) = (&env.body, &env.sig) else {
        return Err(EnvelopeError::Unsigned(purpose));
    };
    key.verify(purpose, bytes, sig).map_err(|source| EnvelopeError::Signature { purpose, source })?;
    body(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        generation: u64,
        pods: Vec<String>,
    }

    fn sample() -> Sample {
        Sample { generation: 7, pods: vec!["a".into(), "b".into()] }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).expect("encode");
        let back: Sample = decode(&bytes, DEFAULT_MAX_PAYLOAD).expect("decode");
        assert_eq!(back, sample());
    }

    #[test]
    fn rejects_garbage_truncation_size_and_version() {
        let bytes = encode(&sample()).expect("encode");
        assert!(matches!(decode::<Sample>(b"\xff\x00garbage", 1024), Err(EnvelopeError::Decode(_))));
        assert!(matches!(decode::<Sample>(&bytes[..bytes.len() - 2], 1024), Err(EnvelopeError::Decode(_))));
        assert!(matches!(decode::<Sample>(&bytes, 4), Err(EnvelopeError::TooLarge { .. })));
        let v3 = cbor(&Envelope { v: 3, body: Value::Bytes(cbor(&sample()).expect("cbor")), sig: None }).expect("v3");
        assert!(matches!(decode::<Sample>(&v3, 1024), Err(EnvelopeError::UnknownVersion(3))));
        let v2_inline =
            cbor(&Envelope { v: 2, body: Value::serialized(&sample()).expect("value"), sig: None }).expect("encode");
        assert!(matches!(decode::<Sample>(&v2_inline, 1024), Err(EnvelopeError::Decode(_))));
    }

    /// What a build before signatures wrote (and an agent may have cached).
    #[test]
    fn version_1_payloads_still_read_unsigned() {
        #[derive(Serialize)]
        struct V1<'a> {
            v: u32,
            body: &'a Sample,
        }
        let old = cbor(&V1 { v: 1, body: &sample() }).expect("encode");
        assert_eq!(decode::<Sample>(&old, 1024).expect("decode"), sample());
        let (key, _) = SigningKey::generate().expect("key");
        let refused = decode_verified::<Sample>(&old, 1024, Purpose::Desired, &key.public());
        assert!(matches!(refused, Err(EnvelopeError::Unsigned(Purpose::Desired))));
    }

    #[test]
    fn signed_payloads_verify_and_forgeries_are_refused() {
        let (key, _) = SigningKey::generate().expect("key");
        let (other, _) = SigningKey::generate().expect("key");
        let public = key.public();
        let signed = encode_signed(&sample(), Purpose::Desired, &key).expect("encode");
        let back: Sample = decode_verified(&signed, 1024, Purpose::Desired, &public).expect("verified");
        assert_eq!(back, sample());
        assert_eq!(decode::<Sample>(&signed, 1024).expect("unchecked read"), sample());

        let unsigned = encode(&sample()).expect("encode");
        let err = decode_verified::<Sample>(&unsigned, 1024, Purpose::Desired, &public).expect_err("unsigned");
        assert_eq!(err.to_string(), "unsigned desired message (the controller signs every one)");
        let by_other = encode_signed(&sample(), Purpose::Desired, &other).expect("encode");
        assert!(matches!(
            decode_verified::<Sample>(&by_other, 1024, Purpose::Desired, &public),
            Err(EnvelopeError::Signature { source: SignError::Mismatch, .. })
        ));
        let other_purpose = encode_signed(&sample(), Purpose::Network, &key).expect("encode");
        assert!(decode_verified::<Sample>(&other_purpose, 1024, Purpose::Desired, &public).is_err());
        // The body changed under a valid signature (a higher generation).
        let env: Envelope = ciborium::from_reader(signed.as_slice()).expect("envelope");
        let forged = Sample { generation: 8, ..sample() };
        let tampered = cbor(&Envelope { body: Value::Bytes(cbor(&forged).expect("cbor")), ..env }).expect("encode");
        assert!(matches!(
            decode_verified::<Sample>(&tampered, 1024, Purpose::Desired, &public),
            Err(EnvelopeError::Signature { .. })
        ));
    }
}
