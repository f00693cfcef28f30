//! A container's root file system: an overlay of the image's unpacked layers
//! with a private upper directory, or — where overlayfs is unavailable — a
//! plain copy of the layers with their whiteouts applied.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, major, minor, mknod};

use super::RuntimeError;
use super::records::Snapshotter;

/// Which snapshotter to use: overlay when the kernel has it, or as forced.
pub fn choose(forced: Option<Snapshotter>) -> Snapshotter {
    forced.unwrap_or_else(|| {
        let has_overlay = fs::read_to_string("/proc/filesystems")
            .map(|s| s.lines().any(|l| l.ends_with("\toverlay")))
            .unwrap_or(false);
        if has_overlay { Snapshotter::Overlay } else { Snapshotter::Copy }
    })
}

/// Builds `dir/rootfs` from `layers` (bottom first). Returns the rootfs path.
pub fn prepare(kind: Snapshotter, layers: &[PathBuf], dir: &Path) -> Result<PathBuf, RuntimeError> {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(RuntimeError::io(&rootfs))?;
    match kind {
        Snapshotter::Overlay => {
            let upper = dir.join("upper");
            let work = dir.join("work");
            for d in [&upper, &work] {
                fs::create_dir_all(d).map_err(RuntimeError::io(d))?;
            }
            let lower: Vec<String> = layers.iter().rev().map(|l| l.display().to_string()).collect();
            let options =
                format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
            mount(Some("overlay"), &rootfs, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
                .map_err(RuntimeError::sys(&rootfs))?;
        }
        Snapshotter::Copy => {
            let _no_fork_meanwhile = crate::forklock::writing();
            for layer in layers {
                apply_layer(layer, &rootfs).map_err(RuntimeError::io(layer))?;
            }
        }
    }
    Ok(rootfs)
}

/// Unmounts (overlay) and deletes a container's rootfs and scratch dirs.
pub fn cleanup(kind: Snapshotter, dir: &Path) {
    let rootfs = dir.join("rootfs");
    if kind == Snapshotter::Overlay && crate::fsutil::is_mount_point(&rootfs) {
        if let Err(e) = umount2(&rootfs, MntFlags::MNT_DETACH) {
            tracing::warn!(rootfs = %rootfs.display(), error = %e, "could not unmount container root");
        }
    }
    for d in ["rootfs", "upper", "work"] {
        let p = dir.join(d);
        if p.exists() {
            let _ = fs::remove_dir_all(&p);
        }
    }
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && major(meta.rdev()) == 0 && minor(meta.rdev()) == 0
}

fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 1];
    matches!(rustix::fs::getxattr(dir, "trusted.overlay.opaque", &mut buf), Ok(1) if buf[0] == b'y')
}

/// Copies one unpacked layer onto `dst`, applying its whiteouts.
fn apply_layer(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from)?;
        if is_whiteout(&meta) {
            remove_any(&to)?;
            continue;
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            if let Ok(existing) = fs::symlink_metadata(&to) {
                if !existing.is_dir() || is_opaque(&from) {
                    remove_any(&to)?;
                }
            }
            if !to.exists() {
                fs::create_dir(&to)?;
            }
            apply_layer(&from, &to)?;
        } else {
            remove_any(&to)?;
            if ft.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            } else if ft.is_file() {
                fs::copy(&from, &to)?;
            } else {
                let kind = if ft.is_char_device() {
                    SFlag::S_IFCHR
                } else if ft.is_block_device() {
                    SFlag::S_IFBLK
                } else if ft.is_fifo() {
                    SFlag::S_IFIFO
                } else {
                    continue; // sockets are not carried in layers
                };
                mknod(&to, kind, Mode::from_bits_truncate(meta.mode()), meta.rdev()).map_err(io::Error::from)?;
            }
        }
        lchown(&to, Some(meta.uid()), Some(meta.gid()))?;
        if !ft.is_symlink() {
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_snapshotters_apply_whiteouts() {
        if !kedge_tests::require(kedge_tests::is_root(), "root (whiteouts, overlay mounts)") {
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let (l1, l2) = (tmp.path().join("l1"), tmp.path().join("l2"));
        for d in ["a", "b"] {
            fs::create_dir_all(l1.join(d)).expect("mkdir");
            fs::create_dir_all(l2.join(d)).expect("mkdir");
        }
        for f in ["a/gone", "a/stays", "b/old", "c"] {
            fs::write(l1.join(f), f).expect("write");
        }
        mknod(&l2.join("a/gone"), SFlag::S_IFCHR, Mode::empty(), 0).expect("whiteout");
        rustix::fs::setxattr(l2.join("b"), "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty())
            .expect("opaque");
        fs::write(l2.join("b/new"), "new").expect("write");
        for kind in [Snapshotter::Overlay, Snapshotter::Copy] {
            let dir = tmp.path().join(format!("{kind:?}"));
            let root = prepare(kind, &[l1.clone(), l2.clone()], &dir).expect("prepare");
            let exists = |p: &str| root.join(p).exists();
            assert!(!exists("a/gone") && exists("a/stays"), "{kind:?}: a whiteout hides the lower file");
            assert!(!exists("b/old") && exists("b/new"), "{kind:?}: an opaque directory hides the lower directory");
            assert!(exists("c"));
            cleanup(kind, &dir);
            assert!(!root.exists(), "{kind:?}: cleaned up");
        }
    }
}
