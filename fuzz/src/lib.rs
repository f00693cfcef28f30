//! What the fuzz targets share: this run's keys, and a directory listing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kedge_common::seal::SealSecret;
use kedge_common::sign::SigningKey;

/// One signing key and one sealing key for the whole run: the harness signs
/// (and seals) with them, and nothing the fuzzer writes carries them.
pub fn keys() -> &'static (SigningKey, SealSecret) {
    static KEYS: OnceLock<(SigningKey, SealSecret)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (key, _) = SigningKey::generate().expect("signing key");
        (key, SealSecret::generate().expect("seal key"))
    })
}

/// A scratch directory for the whole run.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir")).path()
}

/// Every path under `root`, sorted (symlinks listed, not followed).
pub fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}
