//! The controller key this node trusts (design.md §3a): taken from the join
//! token the first time one is given, kept in `DATA/controller.pub`, and
//! from then on the only key whose signatures the agent accepts — a later
//! token for another controller is refused rather than silently trusted.

use std::path::{Path, PathBuf};

use kedge_common::sign::{PublicKey, Token};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "the token is for controller key {given}, but this node is pinned to {pinned} ({path}); remove that file to join another controller"
    )]
    OtherController { given: PublicKey, pinned: PublicKey, path: PathBuf },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("controller.pub")
}

/// The pinned controller key: the one on file, else the token's (which is
/// then pinned). `None`: no token was ever given.
pub fn controller_key(data_dir: &Path, token: Option<&Token>) -> Result<Option<PublicKey>, PinError> {
    let path = path(data_dir);
    let pinned = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.trim()
                .parse::<PublicKey>()
                .map_err(|e| PinError::Unreadable { path: path.clone(), reason: e.to_string() })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(PinError::Io { path, source }),
    };
    match (pinned, token) {
        (Some(pinned), Some(t)) if t.key != pinned => Err(PinError::OtherController { given: t.key, pinned, path }),
        (Some(pinned), _) => Ok(Some(pinned)),
        (None, Some(t)) => {
            crate::fsutil::write_private(&path, format!("{}\n", t.key).as_bytes())
                .map_err(|source| PinError::Io { path: path.clone(), source })?;
            tracing::info!(key = %t.key, "pinned the controller's key from the join token");
            Ok(Some(t.key))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_common::sign::SigningKey;

    #[test]
    fn the_first_token_pins_and_another_controller_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let (ours, _) = SigningKey::generate().expect("key");
        let (theirs, _) = SigningKey::generate().expect("key");
        let token = Token::generate(ours.public()).expect("token");
        assert_eq!(controller_key(dir.path(), None).expect("none"), None, "no token, nothing pinned");
        assert_eq!(controller_key(dir.path(), Some(&token)).expect("pin"), Some(ours.public()));
        assert_eq!(controller_key(dir.path(), None).expect("kept"), Some(ours.public()), "kept without the token");
        let other = Token::generate(theirs.public()).expect("token");
        let err = controller_key(dir.path(), Some(&other)).expect_err("another controller");
        assert!(err.to_string().contains("remove that file"), "{err}");
        std::fs::write(path(dir.path()), "garbage").expect("write");
        assert!(matches!(controller_key(dir.path(), None), Err(PinError::Unreadable { .. })));
    }
}
