//! This node's identity on the fleet link (design.md §3a): its key pair
//! (`DATA/node.key`, PKCS#8, 0600 — made on the node, never sent anywhere),
//! the token it joins with and whether the controller accepted its key
//! (`DATA/identity.json`), and the count of its starts its message counter
//! is built from ([`kedge_common::wire::Seq`]).
//!
//! A token the node has not joined with before gets a fresh key: that is
//! how a revoked node (its Node deleted, its key refused for good) comes
//! back — with a new token, as a new key. Restarting with the same token
//! keeps the key, so a join whose answer was lost is simply asked again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kedge_common::seal::SealSecret;
use kedge_common::sign::{SigningKey, Token};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("cannot make a key pair")]
    Generate,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    /// The token the key was made for.
    token_id: String,
    /// Whether the controller accepted the key.
    joined: bool,
    /// Starts of the agent with this identity.
    epoch: u32,
}

/// What the link signs with and how far the join has come.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: Arc<SigningKey>,
    /// What the controller seals this node's snapshots to (`DATA/node.seal`,
    /// 0600, made with the signing key).
    pub seal: SealSecret,
    /// The token to join with; `None` once the controller accepted the key.
    pub join_token: Option<Token>,
    /// This start's number (the high half of the message counter).
    pub epoch: u32,
    record_path: PathBuf,
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.key")
}

fn seal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.seal")
}

fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.json")
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    crate::fsutil::write_private(path, bytes).map_err(|source| IdentityError::Io { path: path.to_path_buf(), source })
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { path: path.to_path_buf(), source }),
    }
}

/// Loads (or, for a new token, makes) this node's identity and counts this
/// start. `None`: no token was ever given, so there is nothing to join with.
pub fn load(data_dir: &Path, token: Option<&Token>) -> Result<Option<Identity>, IdentityError> {
    let rpath = record_path(data_dir);
    let kpath = key_path(data_dir);
    let record: Option<Record> = read(&rpath)?
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .map_err(|e| IdentityError::Unreadable { path: rpath.clone(), reason: e.to_string() })?;
    let key = read(&kpath)?
        .map(|der| SigningKey::from_pkcs8(&der))
        .transpose()
        .map_err(|e| IdentityError::Unreadable { path: kpath.clone(), reason: e.to_string() })?;
    let (key, mut record) = match (key, record, token) {
        (Some(key), Some(r), t) if t.is_none_or(|t| t.id == r.token_id) => (key, r),
        (_, old, Some(t)) => {
            let (key, der) = SigningKey::generate().map_err(|_| IdentityError::Generate)?;
            write(&kpath, &der)?;
            let seal = SealSecret::generate().map_err(|_| IdentityError::Generate)?;
            write(&seal_path(data_dir), &seal.to_bytes())?;
            tracing::info!(key = %key.public(), token = %t.id, "made this node's key pair for joining with a new token");
            (key, Record { token_id: t.id.clone(), joined: false, epoch: old.map_or(0, |r| r.epoch) })
        }
        (_, _, None) => return Ok(None),
    };
    let spath = seal_path(data_dir);
    let seal = match read(&spath)? {
        Some(b) => SealSecret::from_bytes(
            b.try_into()
                .map_err(|_| IdentityError::Unreadable { path: spath.clone(), reason: "not 32 bytes".into() })?,
        ),
        None => {
            // Joined by a build before sealing: the controller seals to
            // nothing it does not know, so this key serves the next join.
            let seal = SealSecret::generate().map_err(|_| IdentityError::Generate)?;
            write(&spath, &seal.to_bytes())?;
            seal
        }
    };
    record.epoch = record.epoch.wrapping_add(1);
    write(&rpath, &serde_json::to_vec(&record).unwrap_or_default())?;
    let join_token = match token {
        Some(t) if !record.joined => Some(t.clone()),
        _ => None,
    };
    if !record.joined && join_token.is_none() {
        tracing::error!(
            "this node's key was never accepted and no token is given: it cannot join (give it a token with --token, agent.yaml or the first-boot file)"
        );
    }
    Ok(Some(Identity { key: Arc::new(key), seal, join_token, epoch: record.epoch, record_path: rpath }))
}

impl Identity {
    /// An identity held in memory only (tests of the link protocol).
    pub fn in_memory(key: Arc<SigningKey>, seal: SealSecret, join_token: Option<Token>, epoch: u32) -> Identity {
        Identity { key, seal, join_token, epoch, record_path: PathBuf::new() }
    }

    /// Whether the controller accepted this node's key.
    pub fn joined(&self) -> bool {
        self.join_token.is_none()
    }

    /// Records that the controller accepted the key.
    pub fn mark_joined(&self) -> Result<(), IdentityError> {
        let token_id = self.join_token.as_ref().map(|t| t.id.clone()).unwrap_or_default();
        write(
            &self.record_path,
            &serde_json::to_vec(&Record { token_id, joined: true, epoch: self.epoch }).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_makes_a_new_key_and_a_restart_keeps_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let (controller, _) = SigningKey::generate().expect("key");
        let token = Token::generate(controller.public()).expect("token");
        assert!(load(dir.path(), None).expect("load").is_none(), "no token, no identity");
        let first = load(dir.path(), Some(&token)).expect("load").expect("identity");
        assert!(!first.joined());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(dir.path())).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is the agent's alone");
        // A restart before the answer: the same key, the join asked again.
        let again = load(dir.path(), Some(&token)).expect("load").expect("identity");
        assert_eq!(again.key.public(), first.key.public());
        assert_eq!(again.seal.public(), first.seal.public());
        assert!(again.epoch > first.epoch, "every start counts");
        again.mark_joined().expect("joined");
        let joined = load(dir.path(), Some(&token)).expect("load").expect("identity");
        assert!(joined.joined(), "the same token once joined asks nothing");
        assert_eq!(joined.key.public(), first.key.public());
        let without = load(dir.path(), None).expect("load").expect("identity");
        assert!(without.joined(), "a joined node needs no token any more");
        // A fresh token (the node was revoked): a fresh key, joined anew.
        let fresh = Token::generate(controller.public()).expect("token");
        let rejoin = load(dir.path(), Some(&fresh)).expect("load").expect("identity");
        assert!(!rejoin.joined());
        assert_ne!(rejoin.key.public(), first.key.public());
        assert_ne!(rejoin.seal.public(), first.seal.public(), "a new sealing key too");
        assert!(rejoin.epoch > joined.epoch, "the counter never goes back");
    }
}
