//! A registry's manifest response and an image's config blob, as a pull
//! reads them (agent/src/images/registry.rs): an index (this node's
//! platform chosen) or a manifest, whose digests name blob paths; a config,
//! whose diff_ids name layer directories. Every path stays in the store.
#![no_main]

use kedge_agent::images::{ImageStore, fuzzing};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn store() -> &'static (tempfile::TempDir, ImageStore) {
    static STORE: OnceLock<(tempfile::TempDir, ImageStore)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path().join("images")).expect("store");
        (dir, store)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, store) = store();
    if let Ok(paths) = fuzzing::manifest_response(store, data) {
        for p in paths {
            assert!(p.starts_with(store.root().join("blobs/sha256")), "{} is outside the blob store", p.display());
        }
    }
    if let Ok(dirs) = fuzzing::config_layers(store, data) {
        for d in dirs {
            assert_eq!(d.parent(), Some(store.root().join("layers").as_path()), "{} is outside layers/", d.display());
        }
    }
});
