//! Unpacking one layer into a directory overlayfs can stack: OCI whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`) become overlay whiteouts (a 0:0 character
//! device, the `trusted.overlay.opaque` xattr). The uncompressed stream is
//! checked against the config's diff_id while it is unpacked.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::{ImageError, Result, hex, io_err};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    ctx: ring::digest::Context,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

fn layer_error(digest: &str, message: impl Into<String>) -> ImageError {
    ImageError::Layer { digest: digest.to_string(), message: message.into() }
}

/// Opens a layer blob as an uncompressed tar stream (gzip or plain).
fn open_layer(blob: &Path, diff_id: &str) -> Result<Box<dyn Read>> {
    let mut file = BufReader::new(File::open(blob).map_err(io_err(blob))?);
    let mut magic = [0u8; 4];
    let n = {
        let buf = io::BufRead::fill_buf(&mut file).map_err(io_err(blob))?;
        let n = buf.len().min(4);
        magic[..n].copy_from_slice(&buf[..n]);
        n
    };
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(file)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Err(layer_error(diff_id, "zstd-compressed layers are not supported; use gzip or uncompressed layers"))
    } else {
        Ok(Box::new(file))
    }
}

pub(super) fn unpack_layer(blob: &Path, dest: &Path, tmp_root: &Path, diff_id: &str) -> Result<()> {
    let work = tmp_root.join(format!("layer-{}-{}", std::process::id(), crate::fsutil::unique()));
    let result = unpack_into(blob, &work, diff_id);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&work);
        return Err(e);
    }
    if dest.exists() {
        // Left by a crash between the rename and the `.done` marker.
        fs::remove_dir_all(dest).map_err(io_err(dest))?;
    }
    fs::rename(&work, dest).map_err(io_err(dest))?;
    // The marker sits beside the layer, not in it: the layer directory is
    // exactly what the container sees.
    let done = dest.with_extension("done");
    fs::write(&done, b"").map_err(io_err(&done))
}

fn unpack_into(blob: &Path, work: &Path, diff_id: &str) -> Result<()> {
    fs::create_dir_all(work).map_err(io_err(work))?;
    let mut hashing =
        HashingReader { inner: open_layer(blob, diff_id)?, ctx: ring::digest::Context::new(&ring::digest::SHA256) };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        let entries = archive.entries().map_err(|e| layer_error(diff_id, format!("not a tar stream: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_error(diff_id, format!("corrupt tar entry: {e}")))?;
            let path = entry.path().map_err(|e| layer_error(diff_id, format!("bad path in layer: {e}")))?.into_owned();
            // The name's bytes as they are: a whiteout of a name that is not
            // UTF-8 must hide that name, not its lossy spelling.
            let Some(name) = path.file_name().map(|n| n.as_bytes().to_vec()) else {
                continue;
            };
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                // Lexically inside, and through no symlink an earlier entry
                // made (`a -> /etc`, then `a/.wh.x` would mknod in /etc).
                let parent = safe_join(work, path.parent().unwrap_or(Path::new("")))
                    .filter(|p| !through_symlink(work, p))
                    .ok_or_else(|| layer_error(diff_id, format!("whiteout escapes the layer: {}", path.display())))?;
                fs::create_dir_all(&parent).map_err(io_err(&parent))?;
                if name == OPAQUE.as_bytes() {
                    rustix::fs::setxattr(&parent, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty())
                        .map_err(|e| ImageError::Io { path: parent.clone(), source: e.into() })?;
                } else {
                    let target = parent.join(OsStr::from_bytes(hidden));
                    let _ = fs::remove_file(&target);
                    mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                        .map_err(|e| ImageError::Io { path: target.clone(), source: e.into() })?;
                }
                continue;
            }
            let ok = entry.unpack_in(work).map_err(|e| {
                // tar's message names the file; the cause is in its source.
                let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                layer_error(diff_id, format!("unpacking {}: {e}{cause}", path.display()))
            })?;
            if !ok {
                return Err(layer_error(diff_id, format!("entry escapes the layer: {}", path.display())));
            }
        }
    }
    // Tar's end-of-archive padding still counts towards the diff_id.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| layer_error(diff_id, format!("reading layer: {e}")))?;
    let actual = format!("sha256:{}", hex(hashing.ctx.finish().as_ref()));
    if actual != diff_id {
        return Err(layer_error(diff_id, format!("uncompressed content hashes to {actual}, not the config's diff_id")));
    }
    Ok(())
}

/// Whether `path` (under `root`) passes through a symlink below `root`:
/// what follows it would land wherever the link points.
fn through_symlink(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else { return true };
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            // Nothing there yet: the rest is created as plain directories.
            Err(_) => return false,
        }
    }
    false
}

/// `root/rel` when `rel` stays inside `root` (no `..`, no absolute part).
pub(crate) fn safe_join(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    /// A header of `size` bytes, owned by root, mode `mode`, at time 0.
    fn header(ty: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// What an uncompressed layer `raw` hashes to.
    fn diff_id_of(raw: &[u8]) -> String {
        format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, raw).as_ref()))
    }

    /// The uncompressed layer `raw` stored as blob `name`; returns (blob path, diff_id).
    fn stored(dir: &Path, name: &str, raw: &[u8]) -> (PathBuf, String) {
        let blob = dir.join(name);
        fs::write(&blob, raw).expect("write blob");
        (blob, diff_id_of(raw))
    }

    /// A gzip'd layer tar with the given (path, content) files and whiteouts,
    /// stored as a blob; returns (blob path, diff_id).
    fn layer(dir: &Path, name: &str, files: &[(&str, &str)]) -> (PathBuf, String) {
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            for (path, content) in files {
                let mut h = header(tar::EntryType::Regular, content.len() as u64, 0o644);
                h.set_cksum();
                b.append_data(&mut h, path, content.as_bytes()).expect("append");
            }
            b.finish().expect("finish");
        }
        let diff_id = diff_id_of(&raw);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).expect("gzip");
        let blob = dir.join(name);
        fs::write(&blob, gz.finish().expect("gzip")).expect("write blob");
        (blob, diff_id)
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_and_the_diff_id_is_checked() {
        if !kedge_tests::require(kedge_tests::is_root(), "root (whiteouts are 0:0 devices and trusted.* xattrs)") {
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let (blob, diff_id) =
            layer(tmp.path(), "l2", &[("a/keep", "k"), ("a/.wh.gone", ""), ("b/.wh..wh..opq", ""), ("b/new", "n")]);
        let dest = tmp.path().join("layer");
        unpack_layer(&blob, &dest, tmp.path(), &diff_id).expect("unpacks");
        let gone = fs::symlink_metadata(dest.join("a/gone")).expect("whiteout node");
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0, "a 0:0 character device");
        let mut buf = [0u8; 1];
        assert_eq!(rustix::fs::getxattr(dest.join("b"), "trusted.overlay.opaque", &mut buf).ok(), Some(1));
        assert_eq!(fs::read_to_string(dest.join("a/keep")).expect("file"), "k");
        assert!(dest.with_extension("done").exists() && !dest.join(".wh.gone").exists());

        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = unpack_layer(&blob, &tmp.path().join("other"), tmp.path(), &wrong).expect_err("diff_id mismatch");
        assert!(err.to_string().contains("not the config's diff_id"), "{err}");
        assert!(!tmp.path().join("other").exists(), "nothing half-unpacked is kept");
    }

    #[test]
    fn entries_escaping_the_layer_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            let mut h = header(tar::EntryType::Regular, 1, 0o644);
            // Header::set_path refuses "..", so write the name bytes directly.
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"x"[..]).expect("append");
            b.finish().expect("finish");
        }
        let (blob, diff_id) = stored(tmp.path(), "evil", &raw);
        let err = unpack_layer(&blob, &tmp.path().join("l"), tmp.path(), &diff_id).expect_err("refused");
        assert!(err.to_string().contains("escape"), "{err}");
        assert!(!tmp.path().join("escape").exists());
    }

    #[test]
    fn a_whiteout_hides_a_name_that_is_not_utf8() {
        if !kedge_tests::require(kedge_tests::is_root(), "root (whiteouts are 0:0 devices)") {
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            let mut h = header(tar::EntryType::Regular, 0, 0o644);
            // d/.wh.<0xff>: Header::set_path wants UTF-8, so the bytes go in directly.
            h.as_old_mut().name[..7].copy_from_slice(b"d/.wh.\xff");
            h.set_cksum();
            b.append(&h, &b""[..]).expect("append");
            b.finish().expect("finish");
        }
        let (blob, diff_id) = stored(tmp.path(), "blob", &raw);
        let dest = tmp.path().join("layer");
        unpack_layer(&blob, &dest, tmp.path(), &diff_id).expect("unpacks");
        let hidden = fs::symlink_metadata(dest.join("d").join(OsStr::from_bytes(b"\xff"))).expect("whiteout of 0xff");
        assert!(hidden.file_type().is_char_device() && hidden.rdev() == 0);
        let names: Vec<_> = fs::read_dir(dest.join("d")).expect("d").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "only the whiteout of the very name, not its lossy spelling: {names:?}");
    }

    #[test]
    fn whiteouts_under_a_symlink_the_layer_made_are_refused() {
        if !kedge_tests::require(kedge_tests::is_root(), "root (whiteouts are 0:0 devices)") {
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        // `a -> outside`, then a whiteout (or an opaque marker) under `a/`.
        for whiteout in ["a/.wh.planted", "a/.wh..wh..opq"] {
            let mut raw = Vec::new();
            {
                let mut b = tar::Builder::new(&mut raw);
                b.append_link(&mut header(tar::EntryType::Symlink, 0, 0o777), "a", &outside).expect("symlink");
                let mut h = header(tar::EntryType::Regular, 0, 0o644);
                h.set_cksum();
                b.append_data(&mut h, whiteout, &b""[..]).expect("whiteout");
                b.finish().expect("finish");
            }
            let (blob, diff_id) = stored(tmp.path(), "evil", &raw);
            let err = unpack_layer(&blob, &tmp.path().join("l"), tmp.path(), &diff_id).expect_err("refused");
            assert!(err.to_string().contains("whiteout escapes the layer: a/.wh."), "{whiteout}: {err}");
            assert_eq!(fs::read_dir(&outside).expect("outside").count(), 0, "{whiteout}: nothing made through a");
            let mut buf = [0u8; 1];
            assert!(rustix::fs::getxattr(&outside, "trusted.overlay.opaque", &mut buf).is_err(), "{whiteout}: xattr");
        }
    }
}
