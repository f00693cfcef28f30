//! Node-local persistent volumes (StorageClass `local-path`): one directory
//! per volume handle under the storage dir, made when a pod first mounts it
//! and kept through pod deletion, agent restarts and reboots. Only the
//! controller's word removes one: a snapshot that names it as deleted (its
//! claim went and its reclaim policy was `Delete`). A volume the node does
//! not hear about — a renamed node, a controller restored from an old
//! backup — is left alone.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kedge_common::pod::LocalPath;

/// Prefix of the handles the controller gives (`pvc-<claim uid>`): nothing
/// else in the storage dir is ever removed.
const HANDLE_PREFIX: &str = "pvc-";

/// The directory of volume `handle`, made on first use, open to any user
/// (as K3s's local-path provisioner makes it): the pod's processes may run
/// as any uid.
pub fn volume_dir(storage: &Path, handle: &str) -> io::Result<PathBuf> {
    if !LocalPath::is_valid_handle(handle) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid volume handle {handle:?}")));
    }
    let dir = storage.join(handle);
    if !dir.is_dir() {
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
    }
    Ok(dir)
}

/// Removes the directories of the deleted volumes `handles` that exist;
/// returns what it tried. A handle that is not one of the controller's
/// (`pvc-…`, one path component) is never touched.
pub fn remove(storage: &Path, handles: &[String]) -> Vec<(String, io::Result<()>)> {
    let mut out = Vec::new();
    for h in handles {
        if !h.starts_with(HANDLE_PREFIX) || !LocalPath::is_valid_handle(h) {
            continue;
        }
        let dir = storage.join(h);
        // Not following a link: only a real directory of the storage dir goes.
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            out.push((h.clone(), fs::remove_dir_all(&dir)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_volumes_go() {
        let root = tempfile::tempdir().expect("tmp");
        let a = volume_dir(root.path(), "pvc-a").expect("made");
        fs::write(a.join("data"), b"kept").expect("write");
        volume_dir(root.path(), "pvc-b").expect("made");
        fs::create_dir(root.path().join("lost+found")).expect("mkdir");
        assert_eq!(fs::metadata(&a).expect("meta").permissions().mode() & 0o777, 0o777);
        // Made again: the data is still there.
        assert_eq!(fs::read(volume_dir(root.path(), "pvc-a").expect("again").join("data")).expect("read"), b"kept");
        let named = ["pvc-b", "pvc-gone", "lost+found", "../x"].map(str::to_owned);
        let removed = remove(root.path(), &named);
        assert_eq!(removed.iter().map(|(h, r)| (h.as_str(), r.is_ok())).collect::<Vec<_>>(), vec![("pvc-b", true)]);
        assert!(a.join("data").exists(), "not named: kept");
        assert!(!root.path().join("pvc-b").exists());
        assert!(root.path().join("lost+found").exists(), "not a volume: left alone");
    }

    #[test]
    fn a_handle_cannot_leave_the_storage_dir() {
        let root = tempfile::tempdir().expect("tmp");
        for bad in ["..", "../etc", "a/b", "", "."] {
            assert!(volume_dir(root.path(), bad).is_err(), "{bad:?}");
        }
    }
}
