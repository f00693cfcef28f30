//! Signatures on the fleet link (design.md §3a: the broker is hostile).
//!
//! Ed25519 from `ring` (already in both binaries through rustls). What is
//! signed is the exact CBOR bytes of a message's body, prefixed with what
//! the message is for, so a signature made for one purpose (a node's
//! snapshot) can never pass for another (the network table):
//! `"kedge signed " PURPOSE "\n" BODY`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("cannot generate a key pair")]
    Generate,
    #[error("not an Ed25519 PKCS#8 private key")]
    BadPrivateKey,
    #[error("{0:?} is not a kedge public key (43 characters of base64url)")]
    BadPublicKey(String),
    #[error("the signature does not verify with the pinned key")]
    Mismatch,
}

/// What a signed message is for (part of what is signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A node's desired snapshot (`kedge/v1/nodes/{node}/desired`).
    Desired,
    /// The cluster network table (`kedge/v1/cluster/network`).
    Network,
    /// A node's join request, signed with the key it asks to be known by
    /// (proof that it holds it).
    Join,
    /// The controller's answer to a join request.
    JoinAnswer,
    /// A node's report (`kedge/v1/nodes/{node}/status`).
    Report,
    /// A node's event (`kedge/v1/nodes/{node}/events`).
    Event,
    /// A node's presence (`kedge/v1/nodes/{node}/presence`, also its Last Will).
    Presence,
    /// A joined node's request for a new key (`kedge/v1/nodes/{node}/rotate`),
    /// signed with its current key.
    Rotate,
    /// The same request signed with the new key (proof that it holds it).
    RotateProof,
    /// The controller's request to open a session on a node
    /// (`kedge/v1/nodes/{node}/rpc/open`, [`crate::session`]).
    SessionOpen,
    /// Never sent: the secret a node's MQTT client id is derived from
    /// ([`SigningKey::client_id`]).
    ClientId,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Desired => "desired",
            Purpose::Network => "network",
            Purpose::Join => "join",
            Purpose::JoinAnswer => "join answer",
            Purpose::Report => "report",
            Purpose::Event => "event",
            Purpose::ClientId => "client id",
            Purpose::Rotate => "rotate",
            Purpose::RotateProof => "rotate proof",
            Purpose::Presence => "presence",
            Purpose::SessionOpen => "session open",
        }
    }
}

fn message(purpose: Purpose, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 24);
    m.extend_from_slice(b"kedge signed ");
    m.extend_from_slice(purpose.as_str().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m
}

/// A private signing key (the controller's, or a node's).
pub struct SigningKey(Ed25519KeyPair);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public())
    }
}

impl SigningKey {
    /// A new key, and its PKCS#8 document to keep (0600) for the next start.
    pub fn generate() -> Result<(SigningKey, Vec<u8>), SignError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignError::Generate)?;
        let der = doc.as_ref().to_vec();
        Ok((SigningKey::from_pkcs8(&der)?, der))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, SignError> {
        Ed25519KeyPair::from_pkcs8(der).map(SigningKey).map_err(|_| SignError::BadPrivateKey)
    }

    pub fn public(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(k)
    }

    /// The signature of `body` for `purpose`.
    pub fn sign(&self, purpose: Purpose, body: &[u8]) -> Vec<u8> {
        self.0.sign(&message(purpose, body)).as_ref().to_vec()
    }

    /// The MQTT client id of node `node` holding this key: the name and 128
    /// bits derived from the key (Ed25519 signatures are deterministic), so
    /// the same on every start and unknown to anyone without the key. A
    /// client id is the one thing that lets a client knock another off a
    /// broker (a newer connection with the same id replaces the older): a
    /// guessable one — the bare node name — would let anyone do that to any
    /// node on the embedded broker.
    pub fn client_id(&self, node: &str) -> String {
        let secret = ring::digest::digest(&ring::digest::SHA256, &self.sign(Purpose::ClientId, node.as_bytes()));
        let hex: String = secret.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{node}-{hex}")
    }
}

/// A public key, as pinned by the other side. Its text form is 43
/// characters of unpadded base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Whether `sig` is this key's signature of `body` for `purpose`.
    pub fn verify(&self, purpose: Purpose, body: &[u8], sig: &[u8]) -> Result<(), SignError> {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(&message(purpose, body), sig).map_err(|_| SignError::Mismatch)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// What a join request proves knowledge of the token's secret over: the
/// node name, the token id and the key the node asks to be known by, so a
/// captured proof serves no other name or key.
fn join_message(node: &str, token_id: &str, key: &PublicKey) -> Vec<u8> {
    format!("kedge join\n{node}\n{token_id}\n{key}").into_bytes()
}

/// HMAC-SHA256, keyed with the token's secret, of the join message (the
/// secret itself never travels).
pub fn join_proof(secret: &str, node: &str, token_id: &str, key: &PublicKey) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&k, &join_message(node, token_id, key)).as_ref().to_vec()
}

/// Whether `proof` is [`join_proof`] of these (compared in constant time).
pub fn verify_join_proof(secret: &str, node: &str, token_id: &str, key: &PublicKey, proof: &[u8]) -> bool {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&k, &join_message(node, token_id, key), proof).is_ok()
}

/// Whether a presented secret (a bearer token) is the expected one, in
/// time that does not depend on where they differ.
pub fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && presented.iter().zip(expected).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `n` random bytes, base64url (nonces).
pub fn random_text(n: usize) -> Result<String, SignError> {
    use ring::rand::SecureRandom;
    let mut raw = vec![0u8; n];
    SystemRandom::new().fill(&mut raw).map_err(|_| SignError::Generate)?;
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// A signature as text (base64url), for JSON messages (presence).
pub fn signature_text(sig: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(sig)
}

/// The bytes of a signature given as text; `None` if it is not base64url.
pub fn signature_from_text(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

impl From<[u8; 32]> for PublicKey {
    fn from(k: [u8; 32]) -> Self {
        PublicKey(k)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = SignError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| SignError::BadPublicKey(s.to_owned()))?;
        let k: [u8; 32] = bytes.try_into().map_err(|_| SignError::BadPublicKey(s.to_owned()))?;
        Ok(PublicKey(k))
    }
}

/// A join token, as `kedge-controller token create` prints it:
/// `kedge1.KEY.ID.SECRET` — the controller's public key (which the agent
/// pins, as a K3s token pins its CA), then the token's id and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub key: PublicKey,
    /// 6 characters of `[a-z0-9]`, as a Kubernetes bootstrap token's id.
    pub id: String,
    /// 16 characters of `[a-z0-9]`.
    pub secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(kedge1.{}.{}.…)", self.key, self.id)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kedge1.{}.{}.{}", self.key, self.id, self.secret)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a kedge join token (kedge1.KEY.ID.SECRET, as `kedge-controller token create` prints it)")]
pub struct BadToken;

impl FromStr for Token {
    type Err = BadToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some("kedge1"), Some(key), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadToken);
        };
        let plain = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !plain(id, 6) || !plain(secret, 16) {
            return Err(BadToken);
        }
        Ok(Token { key: key.parse().map_err(|_| BadToken)?, id: id.to_owned(), secret: secret.to_owned() })
    }
}

impl Token {
    /// A new token for `key` with a random id and secret.
    pub fn generate(key: PublicKey) -> Result<Token, SignError> {
        use ring::rand::SecureRandom;
        const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut raw = [0u8; 22];
        SystemRandom::new().fill(&mut raw).map_err(|_| SignError::Generate)?;
        // 252 = 7 × 36: bytes at or over it are drawn again, so every
        // character is equally likely.
        let mut chars = String::with_capacity(22);
        let rng = SystemRandom::new();
        for mut b in raw {
            while b >= 252 {
                let mut one = [0u8; 1];
                rng.fill(&mut one).map_err(|_| SignError::Generate)?;
                b = one[0];
            }
            chars.push(char::from(ALPHABET[usize::from(b % 36)]));
        }
        Ok(Token { key, id: chars[..6].to_owned(), secret: chars[6..].to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_stable_per_key_and_unguessable_without_it() {
        let (key, der) = SigningKey::generate().expect("key");
        let again = SigningKey::from_pkcs8(&der).expect("the kept document loads");
        let id = key.client_id("n1");
        assert_eq!(id, again.client_id("n1"), "the same on every start");
        assert!(id.starts_with("n1-") && id.len() == 3 + 32, "{id}");
        assert_ne!(id, key.client_id("n2"));
        let (other, _) = SigningKey::generate().expect("key");
        assert_ne!(id, other.client_id("n1"), "another key: another id");
        assert!(!"+#/$".chars().any(|c| id.contains(c)), "a valid MQTT client id: {id}");
    }

    #[test]
    fn signatures_verify_only_with_their_key_body_and_purpose() {
        let (key, der) = SigningKey::generate().expect("key");
        let again = SigningKey::from_pkcs8(&der).expect("the kept document loads");
        assert_eq!(key.public(), again.public());
        let public = key.public();
        let sig = key.sign(Purpose::Desired, b"body");
        assert_eq!(sig.len(), SIGNATURE_LEN);
        assert_eq!(public.verify(Purpose::Desired, b"body", &sig), Ok(()));
        assert_eq!(public.verify(Purpose::Desired, b"bodY", &sig), Err(SignError::Mismatch), "another body");
        assert_eq!(public.verify(Purpose::Network, b"body", &sig), Err(SignError::Mismatch), "another purpose");
        let (other, _) = SigningKey::generate().expect("key");
        assert_eq!(other.public().verify(Purpose::Desired, b"body", &sig), Err(SignError::Mismatch), "another key");
        assert_eq!(public.verify(Purpose::Desired, b"body", &sig[..63]), Err(SignError::Mismatch), "short");
    }

    #[test]
    fn a_join_proof_binds_secret_node_token_and_key() {
        let (key, _) = SigningKey::generate().expect("key");
        let (other, _) = SigningKey::generate().expect("key");
        let k = key.public();
        let proof = join_proof("0123456789abcdef", "n1", "abcdef", &k);
        assert!(verify_join_proof("0123456789abcdef", "n1", "abcdef", &k, &proof));
        assert!(!verify_join_proof("0123456789abcdeX", "n1", "abcdef", &k, &proof), "another secret");
        assert!(!verify_join_proof("0123456789abcdef", "n2", "abcdef", &k, &proof), "another node");
        assert!(!verify_join_proof("0123456789abcdef", "n1", "abcdeX", &k, &proof), "another token");
        assert!(!verify_join_proof("0123456789abcdef", "n1", "abcdef", &other.public(), &proof), "another key");
        assert!(!verify_join_proof("0123456789abcdef", "n1", "abcdef", &k, &proof[..31]), "short");
    }

    #[test]
    fn public_keys_read_back_from_their_text_and_garbage_is_refused() {
        let (key, _) = SigningKey::generate().expect("key");
        let text = key.public().to_string();
        assert_eq!(text.len(), 43);
        assert_eq!(text.parse::<PublicKey>(), Ok(key.public()));
        assert!(matches!("not-a-key".parse::<PublicKey>(), Err(SignError::BadPublicKey(_))));
        assert!(matches!(format!("{text}AA").parse::<PublicKey>(), Err(SignError::BadPublicKey(_))));
        assert_eq!(SigningKey::from_pkcs8(b"garbage").err(), Some(SignError::BadPrivateKey));
    }

    #[test]
    fn tokens_read_back_and_malformed_ones_are_refused() {
        let (key, _) = SigningKey::generate().expect("key");
        let token = Token::generate(key.public()).expect("token");
        let text = token.to_string();
        assert_eq!(text.parse::<Token>(), Ok(token.clone()));
        assert_eq!(token.key, key.public());
        assert!(!format!("{token:?}").contains(&token.secret), "Debug hides the secret");
        let k = key.public().to_string();
        for bad in [
            String::new(),
            "kedge1".into(),
            format!("kedge2.{k}.abcdef.0123456789abcdef"),
            format!("kedge1.{k}.abcde.0123456789abcdef"),
            format!("kedge1.{k}.abcdef.0123456789ABCDEF"),
            format!("kedge1.{k}.abcdef.0123456789abcdef.x"),
            "kedge1.nokey.abcdef.0123456789abcdef".into(),
        ] {
            assert_eq!(bad.parse::<Token>(), Err(BadToken), "{bad:?}");
        }
    }
}
