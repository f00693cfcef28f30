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
}
