//! Sealing a node's snapshot to that node (design.md §3a: Secret and
//! ConfigMap data reach only the node that runs the pod). An ECIES-style
//! box: a fresh X25519 key per message (x25519-dalek, the bare function),
//! the shared secret through HKDF-SHA256 into a ChaCha20-Poly1305 key (both
//! from ring), with both public keys in the derivation. A key is used for
//! one message only, so the nonce is zero. A subscriber without the node's
//! private key — another node included — reads nothing of it.
//!
//! The whole snapshot body is sealed, not only the Secret fields: what is
//! not there cannot leak (names, env values, ConfigMap data alike).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::bytes::Bytes;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("cannot generate a key")]
    Generate,
    #[error("{0:?} is not a kedge seal key (43 characters of base64url)")]
    BadKey(String),
    #[error("malformed sealed box")]
    Malformed,
    #[error("the sealed box does not open with this node's key")]
    Open,
}

const INFO: &[u8] = b"kedge sealed box v1";

/// A node's private sealing key (32 bytes, kept 0600 beside its signing key).
#[derive(Clone)]
pub struct SealSecret([u8; 32]);

/// Its public half, which the controller records when the node joins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SealPublic([u8; 32]);

fn random32() -> Result<[u8; 32], SealError> {
    let mut k = [0u8; 32];
    SystemRandom::new().fill(&mut k).map_err(|_| SealError::Generate)?;
    Ok(k)
}

impl SealSecret {
    pub fn generate() -> Result<SealSecret, SealError> {
        random32().map(SealSecret)
    }

    pub fn from_bytes(b: [u8; 32]) -> SealSecret {
        SealSecret(b)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn public(&self) -> SealPublic {
        SealPublic(x25519_dalek::x25519(self.0, x25519_dalek::X25519_BASEPOINT_BYTES))
    }
}

impl fmt::Debug for SealSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealSecret({})", self.public())
    }
}

impl fmt::Display for SealPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for SealPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealPublic({self})")
    }
}

impl FromStr for SealPublic {
    type Err = SealError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| SealError::BadKey(s.to_owned()))?;
        let k: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey(s.to_owned()))?;
        Ok(SealPublic(k))
    }
}

/// What travels: the sender's one-time public key and the ciphertext.
#[derive(Serialize, Deserialize)]
struct SealedBox {
    epk: Bytes,
    ct: Bytes,
}

fn aead_key(shared: &[u8; 32], epk: &[u8; 32], recipient: &SealPublic) -> Result<LessSafeKey, SealError> {
    // All-zero: the peer's point was of small order (contributes nothing).
    if shared.iter().all(|&b| b == 0) {
        return Err(SealError::Open);
    }
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, INFO);
    let prk = salt.extract(shared);
    let info = [&epk[..], &recipient.0[..]];
    let okm = prk.expand(&info, &CHACHA20_POLY1305).map_err(|_| SealError::Open)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Seals `plaintext` to `recipient`: the CBOR of the box.
pub fn seal(recipient: &SealPublic, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let esk = random32()?;
    let epk = x25519_dalek::x25519(esk, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(esk, recipient.0);
    let key = aead_key(&shared, &epk, recipient)?;
    let mut ct = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), &mut ct)
        .map_err(|_| SealError::Generate)?;
    let mut out = Vec::with_capacity(ct.len() + 48);
    ciborium::into_writer(&SealedBox { epk: Bytes(epk.to_vec()), ct: Bytes(ct) }, &mut out)
        .map_err(|_| SealError::Malformed)?;
    Ok(out)
}

/// Opens a box sealed to `secret`'s public key.
pub fn open(secret: &SealSecret, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let b: SealedBox = ciborium::from_reader(sealed).map_err(|_| SealError::Malformed)?;
    let epk: [u8; 32] = b.epk.as_slice().try_into().map_err(|_| SealError::Malformed)?;
    let shared = x25519_dalek::x25519(secret.0, epk);
    let key = aead_key(&shared, &epk, &secret.public())?;
    let mut ct = b.ct.0;
    let plain =
        key.open_in_place(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), &mut ct).map_err(|_| SealError::Open)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_and_tampering_is_caught() {
        let node = SealSecret::generate().expect("key");
        let other = SealSecret::generate().expect("key");
        let secret = b"password=hunter2";
        let sealed = seal(&node.public(), secret).expect("seal");
        assert!(!sealed.windows(secret.len()).any(|w| w == secret), "no plaintext in the box");
        assert_eq!(open(&node, &sealed).expect("open"), secret);
        assert_eq!(open(&other, &sealed), Err(SealError::Open), "another node's key");
        let again = seal(&node.public(), secret).expect("seal");
        assert_ne!(again, sealed, "a fresh key per message");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open(&node, &tampered), Err(SealError::Open));
        assert_eq!(open(&node, b"garbage"), Err(SealError::Malformed));
        let text = node.public().to_string();
        assert_eq!(text.parse::<SealPublic>(), Ok(node.public()));
        assert!("nope".parse::<SealPublic>().is_err());
    }

    /// A box whose one-time key is a small-order point: refused, not
    /// opened with an all-zero secret.
    #[test]
    fn a_small_order_key_is_refused() {
        let node = SealSecret::generate().expect("key");
        let mut out = Vec::new();
        ciborium::into_writer(&SealedBox { epk: Bytes(vec![0; 32]), ct: Bytes(vec![0; 32]) }, &mut out).expect("cbor");
        assert_eq!(open(&node, &out), Err(SealError::Open));
    }
}
