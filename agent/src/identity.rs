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
//!
//! A joined node rotates its key (`kedge-agent rotate-key`): the next pair
//! waits in `DATA/node.key.next` and `DATA/node.seal.next` until the
//! controller accepts it over the signed link, then takes the place of the
//! current one (key first: a `node.seal.next` without a `node.key.next` is
//! a rotation whose key was already put in place, finished at start — or,
//! beside `rotate.refused`, one the controller refused, dropped).

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
    #[error("this node has not joined yet: there is no key to rotate (it joins with its token first)")]
    NotJoined,
}

/// A key pair made for rotation, waiting for the controller to accept it.
#[derive(Debug, Clone)]
pub struct NextKey {
    pub key: Arc<SigningKey>,
    pub seal: SealSecret,
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

fn next_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.key.next")
}

fn next_seal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.seal.next")
}

/// Where the controller's reason for refusing a rotation is left for
/// `kedge-agent rotate-key` to show.
pub fn refused_path(data_dir: &Path) -> PathBuf {
    data_dir.join("rotate.refused")
}

fn rename(from: &Path, to: &Path) -> Result<(), IdentityError> {
    std::fs::rename(from, to).map_err(|source| IdentityError::Io { path: to.to_path_buf(), source })?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| IdentityError::Io { path: dir.to_path_buf(), source })?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), IdentityError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(IdentityError::Io { path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

fn load_key(path: &Path) -> Result<Option<SigningKey>, IdentityError> {
    read(path)?
        .map(|der| SigningKey::from_pkcs8(&der))
        .transpose()
        .map_err(|e| IdentityError::Unreadable { path: path.to_path_buf(), reason: e.to_string() })
}

fn load_seal(path: &Path) -> Result<Option<SealSecret>, IdentityError> {
    read(path)?
        .map(|b| {
            b.try_into()
                .map(SealSecret::from_bytes)
                .map_err(|_| IdentityError::Unreadable { path: path.to_path_buf(), reason: "not 32 bytes".into() })
        })
        .transpose()
}

/// `kedge-agent rotate-key`: makes the next key pair of this joined node
/// (or keeps the one already waiting) and returns its public key. The
/// running agent, or the next start, asks the controller to take it.
pub fn prepare_rotation(data_dir: &Path) -> Result<kedge_common::sign::PublicKey, IdentityError> {
    let rpath = record_path(data_dir);
    let record: Option<Record> = read(&rpath)?.and_then(|b| serde_json::from_slice(&b).ok());
    if !record.is_some_and(|r| r.joined) {
        return Err(IdentityError::NotJoined);
    }
    if let Some(next) = pending(data_dir)? {
        return Ok(next.key.public());
    }
    remove(&refused_path(data_dir))?;
    let (key, der) = SigningKey::generate().map_err(|_| IdentityError::Generate)?;
    let seal = SealSecret::generate().map_err(|_| IdentityError::Generate)?;
    // The sealing key first: the key's file says a rotation waits.
    write(&next_seal_path(data_dir), &seal.to_bytes())?;
    write(&next_key_path(data_dir), &der)?;
    Ok(key.public())
}

/// The key pair waiting to replace this node's, if any.
pub fn pending(data_dir: &Path) -> Result<Option<NextKey>, IdentityError> {
    let Some(key) = load_key(&next_key_path(data_dir))? else { return Ok(None) };
    let spath = next_seal_path(data_dir);
    let seal = load_seal(&spath)?
        .ok_or_else(|| IdentityError::Unreadable { path: spath, reason: "missing beside node.key.next".into() })?;
    Ok(Some(NextKey { key: Arc::new(key), seal }))
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
    // A sealing key waiting without its key: a rotation whose key was put
    // in place (its sealing key follows), or one refused (dropped).
    if !next_key_path(data_dir).exists() && next_seal_path(data_dir).exists() {
        match refused_path(data_dir).exists() {
            true => remove(&next_seal_path(data_dir))?,
            false => rename(&next_seal_path(data_dir), &seal_path(data_dir))?,
        }
    }
    let key = load_key(&kpath)?;
    let (key, mut record) = match (key, record, token) {
        (Some(key), Some(r), t) if t.is_none_or(|t| t.id == r.token_id) => (key, r),
        (_, old, Some(t)) => {
            let (key, der) = SigningKey::generate().map_err(|_| IdentityError::Generate)?;
            write(&kpath, &der)?;
            let seal = SealSecret::generate().map_err(|_| IdentityError::Generate)?;
            write(&seal_path(data_dir), &seal.to_bytes())?;
            // A rotation of the old key has nothing left to rotate.
            remove(&next_key_path(data_dir))?;
            remove(&next_seal_path(data_dir))?;
            tracing::info!(key = %key.public(), token = %t.id, "made this node's key pair for joining with a new token");
            (key, Record { token_id: t.id.clone(), joined: false, epoch: old.map_or(0, |r| r.epoch) })
        }
        (_, _, None) => return Ok(None),
    };
    let spath = seal_path(data_dir);
    let seal = match load_seal(&spath)? {
        Some(s) => s,
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

    /// The key pair waiting to replace this one (`kedge-agent rotate-key`).
    pub fn pending_rotation(&self) -> Result<Option<NextKey>, IdentityError> {
        match self.record_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => pending(dir),
            None => Ok(None),
        }
    }

    /// The controller took the waiting key pair: it replaces this one on disk.
    pub fn commit_rotation(&self) -> Result<(), IdentityError> {
        let Some(dir) = self.record_path.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
        rename(&next_key_path(dir), &key_path(dir))?;
        rename(&next_seal_path(dir), &seal_path(dir))
    }

    /// The controller refused the waiting key pair: it is dropped, and why
    /// is left for `kedge-agent rotate-key`.
    pub fn refuse_rotation(&self, reason: &str) -> Result<(), IdentityError> {
        let Some(dir) = self.record_path.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
        write(&refused_path(dir), reason.as_bytes())?;
        remove(&next_key_path(dir))?;
        remove(&next_seal_path(dir))
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

    #[test]
    fn a_rotation_waits_beside_the_key_and_takes_its_place_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let (controller, _) = SigningKey::generate().expect("key");
        let token = Token::generate(controller.public()).expect("token");
        let first = load(d, Some(&token)).expect("load").expect("identity");
        assert!(matches!(prepare_rotation(d), Err(IdentityError::NotJoined)), "nothing to rotate before joining");
        first.mark_joined().expect("joined");
        let new = prepare_rotation(d).expect("prepared");
        assert_eq!(prepare_rotation(d).expect("again"), new, "the waiting pair is kept");
        let next = first.pending_rotation().expect("read").expect("waiting");
        assert_eq!(next.key.public(), new);
        // Taken: both in place.
        first.commit_rotation().expect("commit");
        let after = load(d, None).expect("load").expect("identity");
        assert_eq!((after.key.public(), after.seal.public()), (new, next.seal.public()));
        assert!(after.pending_rotation().expect("read").is_none());
        // A stop between the key and its sealing key: finished at start.
        let newer = prepare_rotation(d).expect("prepared");
        let waiting = pending(d).expect("read").expect("waiting");
        std::fs::rename(next_key_path(d), key_path(d)).expect("key in place");
        let resumed = load(d, None).expect("load").expect("identity");
        assert_eq!((resumed.key.public(), resumed.seal.public()), (newer, waiting.seal.public()));
        // Refused: dropped, the reason left, the key unchanged even after a
        // stop between the two removals.
        prepare_rotation(d).expect("prepared");
        write(&refused_path(d), b"used before").expect("reason");
        std::fs::remove_file(next_key_path(d)).expect("half refused");
        let kept = load(d, None).expect("load").expect("identity");
        assert_eq!((kept.key.public(), kept.seal.public()), (newer, waiting.seal.public()));
        assert!(!next_seal_path(d).exists());
        prepare_rotation(d).expect("prepared");
        assert!(!refused_path(d).exists(), "a new rotation forgets the old refusal");
        kept.refuse_rotation("used before").expect("refuse");
        assert!(pending(d).expect("read").is_none());
        assert_eq!(std::fs::read_to_string(refused_path(d)).expect("reason"), "used before");
        // A new token (a revoked node coming back): no rotation left.
        prepare_rotation(d).expect("prepared");
        let fresh = Token::generate(controller.public()).expect("token");
        load(d, Some(&fresh)).expect("load").expect("identity");
        assert!(pending(d).expect("read").is_none());
    }
}
