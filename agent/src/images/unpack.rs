//! Unpacking one layer into a directory overlayfs can stack: OCI whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`) become overlay whiteouts (a 0:0 character
//! device, the `trusted.overlay.opaque` xattr). The uncompressed stream is
//! checked against the config's diff_id while it is unpacked.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
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
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
                continue;
            };
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let parent = safe_join(work, path.parent().unwrap_or(Path::new("")))
                    .ok_or_else(|| layer_error(diff_id, format!("whiteout escapes the layer: {}", path.display())))?;
                fs::create_dir_all(&parent).map_err(io_err(&parent))?;
                if name == OPAQUE {
                    rustix::fs::setxattr(&parent, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty())
                        .map_err(|e| ImageError::Io { path: parent.clone(), source: e.into() })?;
                } else {
                    let target = parent.join(hidden);
                    let _ = fs::remove_file(&target);
                    mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                        .map_err(|e| ImageError::Io { path: target.clone(), source: e.into() })?;
                }
                continue;
            }
            let ok = entry
                .unpack_in(work)
                .map_err(|e| layer_error(diff_id, format!("unpacking {}: {e}", path.display())))?;
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
