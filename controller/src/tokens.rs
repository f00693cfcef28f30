//! Join tokens (`kedge-controller token create`), kept as files beside the
//! signing key so the command works while the controller runs (redb admits
//! one process): `DATA/tokens/ID.json`, 0600 in a 0700 folder, holding the
//! secret (the join's proof is a MAC keyed with it, so the controller needs
//! it, as Kubernetes keeps a bootstrap token's secret in its Secret), the
//! expiry and the uses left. The printed token also carries the
//! controller's public key, which the agent pins; the join that spends a
//! use checks the rest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kedge_common::sign::Token;
use serde::{Deserialize, Serialize};

use crate::tls::{self, TlsError};

/// What is kept of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub secret: String,
    /// Unix time it was made.
    pub created: i64,
    /// Unix time after which it no longer joins (`None`: never expires).
    pub expires: Option<i64>,
    /// Joins it still allows (`None`: any number).
    pub uses_left: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Key(#[from] TlsError),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot make a random token")]
    Random,
}

/// Makes a token valid for `ttl` (none: forever) and `uses` joins (none:
/// any number), and keeps its record.
pub fn create(data_dir: &Path, ttl: Option<Duration>, uses: Option<u32>) -> Result<Token, TokenError> {
    let key = tls::signing_key(data_dir)?;
    let token = Token::generate(key.public()).map_err(|_| TokenError::Random)?;
    let now = jiff::Timestamp::now().as_second();
    let record = TokenRecord {
        secret: token.secret.clone(),
        created: now,
        expires: ttl.map(|t| now.saturating_add(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))),
        uses_left: uses,
    };
    let dir = data_dir.join("tokens");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TokenError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    let json =
        serde_json::to_vec_pretty(&record).map_err(|e| TokenError::Io { path: dir.clone(), source: e.into() })?;
    tls::write_private(&dir.join(format!("{}.json", token.id)), &json)?;
    Ok(token)
}

fn record_path(dir: &Path, id: &str) -> Option<PathBuf> {
    // Ids are 6 of [a-z0-9]; anything else names no file of ours.
    (id.len() == 6 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .then(|| dir.join(format!("{id}.json")))
}

/// Why a join's token does not let it in (said in the signed answer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("unknown token {0} (make one with `kedge-controller token create`)")]
    Unknown(String),
    #[error("wrong secret for token {0}")]
    WrongSecret(String),
    #[error("token {id} expired at {at}")]
    Expired { id: String, at: String },
    #[error("token {0} is used up")]
    UsedUp(String),
    #[error("token {id} cannot be read: {reason}")]
    Unreadable { id: String, reason: String },
}

/// Checks a join's token (in `dir`, `DATA/tokens`) at unix time `now`:
/// known, the proof made with its secret, not expired, not used up.
pub fn check(dir: &Path, id: &str, proof_ok: impl FnOnce(&str) -> bool, now: i64) -> Result<TokenRecord, Refusal> {
    let path = record_path(dir, id).ok_or_else(|| Refusal::Unknown(id.to_owned()))?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Refusal::Unknown(id.to_owned())),
        Err(e) => return Err(Refusal::Unreadable { id: id.to_owned(), reason: e.to_string() }),
    };
    let record: TokenRecord =
        serde_json::from_slice(&bytes).map_err(|e| Refusal::Unreadable { id: id.to_owned(), reason: e.to_string() })?;
    if !proof_ok(&record.secret) {
        return Err(Refusal::WrongSecret(id.to_owned()));
    }
    if let Some(at) = record.expires.filter(|&at| now > at) {
        let at = jiff::Timestamp::from_second(at).map(|t| t.to_string()).unwrap_or_else(|_| at.to_string());
        return Err(Refusal::Expired { id: id.to_owned(), at });
    }
    if record.uses_left == Some(0) {
        return Err(Refusal::UsedUp(id.to_owned()));
    }
    Ok(record)
}

/// Spends one use of a checked token (nothing for an unlimited one).
pub fn spend(dir: &Path, id: &str, mut record: TokenRecord) -> Result<(), TokenError> {
    let Some(left) = record.uses_left else { return Ok(()) };
    let path = record_path(dir, id)
        .ok_or_else(|| TokenError::Io { path: dir.to_path_buf(), source: std::io::Error::other("not a token id") })?;
    record.uses_left = Some(left.saturating_sub(1));
    let json =
        serde_json::to_vec_pretty(&record).map_err(|e| TokenError::Io { path: path.clone(), source: e.into() })?;
    tls::write_private(&path, &json)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_pins_the_controller_key_and_its_record_is_root_s_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let token = create(dir.path(), Some(Duration::from_secs(3600)), Some(2)).expect("token");
        let key = tls::signing_key(dir.path()).expect("key");
        assert_eq!(token.key, key.public(), "the token names the key the controller signs with");
        let path = dir.path().join("tokens").join(format!("{}.json", token.id));
        let text = std::fs::read_to_string(&path).expect("record");
        let record: TokenRecord = serde_json::from_str(&text).expect("record");
        assert_eq!(record.secret, token.secret);
        assert_eq!(record.uses_left, Some(2));
        assert_eq!(record.expires.map(|e| e - record.created), Some(3600));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(token.to_string().parse::<Token>().expect("parses"), token);
    }

    #[test]
    fn checks_refuse_unknown_wrong_expired_and_used_up_tokens() {
        let dir = tempfile::tempdir().expect("tmp");
        let tokens = dir.path().join("tokens");
        let once = create(dir.path(), Some(Duration::from_secs(60)), Some(1)).expect("token");
        let right = |s: &str| s == once.secret;
        let now = jiff::Timestamp::now().as_second();
        assert_eq!(check(&tokens, "zzzzzz", right, now), Err(Refusal::Unknown("zzzzzz".into())));
        assert_eq!(check(&tokens, "../../x", right, now), Err(Refusal::Unknown("../../x".into())));
        assert_eq!(check(&tokens, &once.id, |_| false, now), Err(Refusal::WrongSecret(once.id.clone())));
        assert!(matches!(check(&tokens, &once.id, right, now + 61), Err(Refusal::Expired { .. })));
        let record = check(&tokens, &once.id, right, now).expect("good");
        spend(&tokens, &once.id, record).expect("spend");
        assert_eq!(check(&tokens, &once.id, right, now), Err(Refusal::UsedUp(once.id.clone())));
        let forever = create(dir.path(), None, None).expect("token");
        let record = check(&tokens, &forever.id, |s| s == forever.secret, now + 10_000_000).expect("good");
        spend(&tokens, &forever.id, record).expect("spend");
        assert!(check(&tokens, &forever.id, |s| s == forever.secret, now).is_ok(), "unlimited uses");
    }
}
