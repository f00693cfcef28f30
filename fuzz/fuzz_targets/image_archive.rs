//! `kedge-agent image import FILE`: an OCI layout or `docker save` archive
//! (agent/src/images/import.rs), its index.json/manifest.json/repositories,
//! every blob checked against its digest. Whatever it holds, the import
//! writes only inside the store.
#![no_main]

use kedge_agent::images::ImageStore;
use kedge_fuzz::tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = kedge_fuzz::scratch();
    let archive = base.join("archive.tar");
    std::fs::write(&archive, data).expect("write the archive");
    let root = base.join("store");
    let _ = std::fs::remove_dir_all(&root);
    let store = ImageStore::open(&root).expect("store");
    let _ = store.import(&archive);
    // Nothing but the archive and the store beside them.
    let mut outside = tree(base);
    outside.retain(|p| !p.starts_with(&root) && p != &archive);
    assert!(outside.is_empty(), "the import wrote outside its store: {outside:?}");
});
