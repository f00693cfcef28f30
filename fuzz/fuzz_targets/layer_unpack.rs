//! A layer blob unpacked into a directory overlayfs stacks
//! (agent/src/images/unpack.rs): gzip or plain tar, with OCI whiteouts.
//! Whatever its entries (`..`, absolute paths, symlinks and hard links out
//! of the layer, device files), nothing is made outside the layer, and the
//! only device files in it are the 0:0 whiteouts. Run as root, as the agent
//! is (mknod, trusted.* xattrs).
#![no_main]

use kedge_fuzz::tree;
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

fuzz_target!(|data: &[u8]| {
    // base/{blob, tmp/, layer/} and base/outside/ — the layer's work
    // directory is base/tmp/layer-…, so `../../outside` is one guess away.
    let base = kedge_fuzz::scratch();
    let blob = base.join("blob");
    let (tmp, layer, outside) = (base.join("tmp"), base.join("layer"), base.join("outside"));
    for d in [&tmp, &layer, &outside] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_file(layer.with_extension("done"));
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(&blob, data).expect("blob");
    let secret = base.join("secret");
    std::fs::write(&secret, b"kept").expect("secret");
    // The diff_id the layer's uncompressed stream hashes to, so that what
    // unpacks is kept and can be looked at; every other byte is the fuzzer's.
    let mut plain = Vec::new();
    let plain = if data.starts_with(&[0x1f, 0x8b]) {
        match std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(data), &mut plain) {
            Ok(_) => &plain[..],
            Err(_) => &[][..],
        }
    } else {
        data
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, plain);
    let diff_id = format!("sha256:{}", digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>());
    let unpacked = kedge_agent::images::fuzzing::unpack_layer(&blob, &layer, &tmp, &diff_id).is_ok();
    let made_outside = tree(&outside);
    assert!(made_outside.is_empty(), "made outside the layer: {made_outside:?}");
    assert_eq!(std::fs::read(&secret).ok().as_deref(), Some(&b"kept"[..]), "a file beside the layer changed");
    let mut top = tree(base);
    top.retain(|p| p.parent() == Some(base));
    top.sort();
    let mut expected = vec![blob.clone(), tmp.clone(), outside.clone(), secret.clone()];
    if unpacked {
        expected.extend([layer.clone(), layer.with_extension("done")]);
    }
    expected.sort();
    assert_eq!(top, expected, "made beside the layer");
    let left = tree(&tmp);
    assert!(left.is_empty(), "the unpack left {left:?} in its work directory");
    let secret_ino = std::fs::metadata(&secret).map(|m| m.ino()).ok();
    for p in tree(&layer) {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        let t = m.file_type();
        if t.is_block_device() || (t.is_char_device() && m.rdev() != 0) {
            panic!("{} is a device file ({:#x}) in the layer", p.display(), m.rdev());
        }
        assert!(Some(m.ino()) != secret_ino || !t.is_file(), "{} is a hard link to a file outside", p.display());
    }
});
