//! The versioned CBOR envelope every controller⇄agent payload travels in
//! (design.md §3), with a size cap checked before any decoding work is done.
//!
//! Version 2: `{v: 2, body: bstr, sig?: bstr}` — the body is the CBOR of
//! the message as a byte string, so a signature covers exactly the bytes
//! that were sent (no re-encoding to check it). Version 1 carried the body
//! inline and no signature; it is still read where no signature is asked
//! for (an agent's cache written by an older build), never produced.
//!
//! A sealed envelope (`sealed: true`, a node's snapshot) carries as its body
//! the CBOR of a [`crate::seal`] box of the message, signed as it travels:
//! the signature is checked before anything is opened.

use ciborium::Value;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::seal::{SealError, SealPublic, SealSecret};
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
    #[error("sealed message, and no key to open it")]
    Sealed,
    #[error("sealed message: {0}")]
    Open(#[from] SealError),
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    /// v2: `Value::Bytes` (the body's CBOR); v1: the body itself.
    body: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<Value>,
    /// The body is a sealed box of the message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sealed: bool,
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

fn wrap(body: Vec<u8>, sig: Option<Vec<u8>>, sealed: bool) -> Result<Vec<u8>, EnvelopeError> {
    cbor(&Envelope { v: PROTOCOL_VERSION, body: Value::Bytes(body), sig: sig.map(Value::Bytes), sealed })
}

/// Encodes `body` into an unsigned envelope.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, EnvelopeError> {
    wrap(cbor(body)?, None, false)
}

/// Encodes `body` into an envelope signed by `key` for `purpose`.
pub fn encode_signed<T: Serialize>(body: &T, purpose: Purpose, key: &SigningKey) -> Result<Vec<u8>, EnvelopeError> {
    let bytes = cbor(body)?;
    let sig = key.sign(purpose, &bytes);
    wrap(bytes, Some(sig), false)
}

/// [`encode_signed`], the message sealed to `recipient` first (when given).
pub fn encode_sealed<T: Serialize>(
    body: &T,
    purpose: Purpose,
    key: &SigningKey,
    recipient: Option<&SealPublic>,
) -> Result<Vec<u8>, EnvelopeError> {
    let Some(recipient) = recipient else { return encode_signed(body, purpose, key) };
    let sealed = crate::seal::seal(recipient, &cbor(body)?)?;
    let sig = key.sign(purpose, &sealed);
    wrap(sealed, Some(sig), true)
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
    if env.sealed {
        return Err(EnvelopeError::Sealed);
    }
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
    decode_opened(payload, cap, purpose, key, None)
}

/// [`decode_verified`] of a message that may be sealed to `opener`'s
/// public key: the signature is checked first, then the box opened.
pub fn decode_opened<T: DeserializeOwned>(
    payload: &[u8],
    cap: usize,
    purpose: Purpose,
    key: &PublicKey,
    opener: Option<&SealSecret>,
) -> Result<T, EnvelopeError> {
    let env = open(payload, cap)?;
    let (Value::Bytes(bytes), Some(Value::Bytes(sig))) = (&env.body, &env.sig) else {
        return Err(EnvelopeError::Unsigned(purpose));
    };
    key.verify(purpose, bytes, sig).map_err(|source| EnvelopeError::Signature { purpose, source })?;
    if !env.sealed {
        return body(env);
    }
    let opener = opener.ok_or(EnvelopeError::Sealed)?;
    let plain = crate::seal::open(opener, bytes)?;
    ciborium::from_reader(plain.as_slice()).map_err(|e| EnvelopeError::Decode(e.to_string()))
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
        let v3 = cbor(&Envelope { v: 3, body: Value::Bytes(cbor(&sample()).expect("cbor")), sig: None, sealed: false })
            .expect("v3");
        assert!(matches!(decode::<Sample>(&v3, 1024), Err(EnvelopeError::UnknownVersion(3))));
        let v2_inline =
            cbor(&Envelope { v: 2, body: Value::serialized(&sample()).expect("value"), sig: None, sealed: false })
                .expect("encode");
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
    fn sealed_payloads_open_only_for_their_node_after_the_signature() {
        let (key, _) = SigningKey::generate().expect("key");
        let node = SealSecret::generate().expect("seal key");
        let other = SealSecret::generate().expect("seal key");
        let bytes = encode_sealed(&sample(), Purpose::Desired, &key, Some(&node.public())).expect("encode");
        let back: Sample = decode_opened(&bytes, 1024, Purpose::Desired, &key.public(), Some(&node)).expect("open");
        assert_eq!(back, sample());
        assert!(matches!(
            decode_opened::<Sample>(&bytes, 1024, Purpose::Desired, &key.public(), Some(&other)),
            Err(EnvelopeError::Open(SealError::Open))
        ));
        assert!(matches!(
            decode_verified::<Sample>(&bytes, 1024, Purpose::Desired, &key.public()),
            Err(EnvelopeError::Sealed)
        ));
        assert!(matches!(decode::<Sample>(&bytes, 1024), Err(EnvelopeError::Sealed)));
        // Unsealed still reads where a key is held (a node joined before sealing).
        let plain = encode_sealed(&sample(), Purpose::Desired, &key, None).expect("encode");
        assert_eq!(
            decode_opened::<Sample>(&plain, 1024, Purpose::Desired, &key.public(), Some(&node)).expect("plain"),
            sample()
        );
        // The flag is outside the signature; flipping it only breaks decoding.
        let mut env: Envelope = ciborium::from_reader(bytes.as_slice()).expect("envelope");
        env.sealed = false;
        let flipped = cbor(&env).expect("encode");
        assert!(decode_opened::<Sample>(&flipped, 1024, Purpose::Desired, &key.public(), Some(&node)).is_err());
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
