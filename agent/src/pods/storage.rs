//! Node-local persistent volumes (StorageClass `local-path`): one directory
//! per volume handle under the storage dir, made when a pod first mounts it
//! and kept through pod deletion, agent restarts and reboots. Only the
//! controller's word removes one: a snapshot whose volume list no longer
//! names it (its claim went and its reclaim policy was `Delete`).

use std::collections::BTreeSet;
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

/// Removes each volume directory not in `keep`; returns what it tried.
pub fn prune(storage: &Path, keep: &BTreeSet<String>) -> Vec<(String, io::Result<()>)> {
    let Ok(entries) = fs::read_dir(storage) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(HANDLE_PREFIX) || keep.contains(&name) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        out.push((name, fs::remove_dir_all(e.path())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_stays_until_its_volume_is_no_longer_listed() {
        let root = tempfile::tempdir().expect("tmp");
        let a = volume_dir(root.path(), "pvc-a").expect("made");
        fs::write(a.join("data"), b"kept").expect("write");
        volume_dir(root.path(), "pvc-b").expect("made");
        fs::create_dir(root.path().join("lost+found")).expect("mkdir");
        assert_eq!(fs::metadata(&a).expect("meta").permissions().mode() & 0o777, 0o777);
        // Made again: the data is still there.
        assert_eq!(fs::read(volume_dir(root.path(), "pvc-a").expect("again").join("data")).expect("read"), b"kept");
        let removed = prune(root.path(), &BTreeSet::from(["pvc-a".to_owned()]));
        assert_eq!(removed.iter().map(|(h, r)| (h.as_str(), r.is_ok())).collect::<Vec<_>>(), vec![("pvc-b", true)]);
        assert!(a.join("data").exists());
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
