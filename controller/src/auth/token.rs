//! ServiceAccount tokens: JWTs signed by the controller (ES256, its own key
//! `DATA/tls/service-account.key`, as Kubernetes' `sa.key`), with
//! Kubernetes' claims — issuer, audiences, expiry, `sub` =
//! `system:serviceaccount:NS:NAME`, and under `kubernetes.io` the
//! namespace, the ServiceAccount's name and uid and, for a bound token, the
//! Pod or Secret it is bound to. A presented token is checked here
//! (signature, algorithm, issuer, audience, time); that the ServiceAccount
//! and the bound object still exist with those uids is the caller's check
//! against the store.

use std::path::{Path, PathBuf};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// The issuer, and the audience a token gets when none is asked for
/// (Kubernetes' defaults for a cluster domain of `cluster.local`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ECDSA P-256 key: {reason}")]
    Bad { path: PathBuf, reason: String },
}

/// A reference to the object a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeClaim {
    pub namespace: String,
    pub serviceaccount: BoundRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<BoundRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<BoundRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<BoundRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kube: KubeClaim,
}

/// Why a presented token is not accepted (logged, never sent: the client
/// gets a plain 401).
#[derive(Debug, thiserror::Error)]
#[error("service account token refused: {0}")]
pub struct Refused(String);

/// The controller's token key.
pub struct Issuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    /// The audiences this API server accepts.
    audiences: Vec<String>,
}

impl Issuer {
    /// Loads the key, or makes it on first start (0600).
    pub fn load_or_create(data_dir: &Path) -> Result<Issuer, KeyError> {
        let dir = data_dir.join("tls");
        let path = dir.join("service-account.key");
        let io = |source| KeyError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let der = match std::fs::read(&path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|e| KeyError::Bad { path: path.clone(), reason: e.to_string() })?;
                crate::tls::write_private(&path, pkcs8.as_ref())
                    .map_err(|e| KeyError::Bad { path: path.clone(), reason: e.to_string() })?;
                tracing::info!(path = %path.display(), "generated the service account token key");
                pkcs8.as_ref().to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        Issuer::from_pkcs8(&der).map_err(|reason| KeyError::Bad { path, reason })
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Issuer, String> {
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).map_err(|e| e.to_string())?;
        let public = pair.public_key().as_ref().to_vec();
        // Kubernetes' key id: the SHA-256 of the public key, base64url.
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, &public).as_ref());
        Ok(Issuer {
            encoding: EncodingKey::from_ec_der(der),
            decoding: DecodingKey::from_ec_der(&public),
            kid,
            audiences: vec![ISSUER.to_owned()],
        })
    }

    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// A token for ServiceAccount `account` of `ns`, bound to a pod or a
    /// secret, for `audiences` (none: this API server), valid `ttl` seconds
    /// from now; with its expiry.
    pub fn mint(
        &self,
        ns: &str,
        account: BoundRef,
        pod: Option<BoundRef>,
        secret: Option<BoundRef>,
        audiences: Vec<String>,
        ttl: i64,
    ) -> Result<(String, i64), jsonwebtoken::errors::Error> {
        let now = jiff::Timestamp::now().as_second();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: format!("system:serviceaccount:{ns}:{}", account.name),
            aud: if audiences.is_empty() { self.audiences.clone() } else { audiences },
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kube: KubeClaim { namespace: ns.to_owned(), serviceaccount: account, pod, secret, node: None },
        };
        Ok((self.issue(&claims)?, now + ttl))
    }

    /// Signs `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// The claims of a token this issuer signed for one of its audiences,
    /// not expired and already valid. ES256 only: a token naming another
    /// algorithm is refused before its signature is looked at.
    pub fn verify(&self, token: &str) -> Result<Claims, Refused> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        v.validate_nbf = true;
        v.leeway = 60;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| Refused(e.to_string()))?;
        let c = data.claims;
        let want = format!("system:serviceaccount:{}:{}", c.kube.namespace, c.kube.serviceaccount.name);
        if c.sub != want {
            return Err(Refused(format!("subject {:?} does not name the service account {want:?}", c.sub)));
        }
        Ok(c)
    }
}

/// Whether a bearer token looks like a JWT (three base64url parts), not
/// the admin token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64, ttl: i64) -> Claims {
        Claims {
            iss: ISSUER.to_owned(),
            sub: "system:serviceaccount:default:build".to_owned(),
            aud: vec![ISSUER.to_owned()],
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: "j".to_owned(),
            kube: KubeClaim {
                namespace: "default".to_owned(),
                serviceaccount: BoundRef { name: "build".to_owned(), uid: "u1".to_owned() },
                pod: None,
                secret: None,
                node: None,
            },
        }
    }

    fn issuer() -> Issuer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        Issuer::from_pkcs8(pkcs8.as_ref()).expect("issuer")
    }

    #[test]
    fn a_token_verifies_with_its_issuer_only_and_until_it_expires() {
        let (a, b) = (issuer(), issuer());
        let now = jiff::Timestamp::now().as_second();
        let t = a.issue(&claims(now, 600)).expect("sign");
        assert!(looks_like_jwt(&t));
        assert_eq!(a.verify(&t).expect("valid").kube.serviceaccount.name, "build");
        assert!(b.verify(&t).is_err(), "another key's token");
        let expired = a.issue(&claims(now - 7200, 600)).expect("sign");
        assert!(a.verify(&expired).is_err(), "expired");
        let mut other = claims(now, 600);
        other.aud = vec!["vault".to_owned()];
        assert!(a.verify(&a.issue(&other).expect("sign")).is_err(), "another audience");
        let mut lying = claims(now, 600);
        lying.sub = "system:serviceaccount:kube-system:admin".to_owned();
        assert!(a.verify(&a.issue(&lying).expect("sign")).is_err(), "a subject that is not its account");
        // A token re-labelled with another algorithm (`none`, HS256) is refused.
        let parts: Vec<&str> = t.split('.').collect();
        for alg in [r#"{"alg":"none"}"#, r#"{"alg":"HS256"}"#] {
            let head = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(alg);
            assert!(a.verify(&format!("{head}.{}.{}", parts[1], parts[2])).is_err(), "{alg}");
            assert!(a.verify(&format!("{head}.{}.", parts[1])).is_err(), "{alg} unsigned");
        }
    }
}
