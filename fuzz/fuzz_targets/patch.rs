//! PATCH bodies (controller/src/patch.rs): JSON patch, merge patch and
//! strategic merge patch over an object of one of the kinds whose merge keys
//! the controller knows. Input: a selector byte, the object JSON, a NUL,
//! the patch JSON.
#![no_main]

use kedge_controller::patch::{PatchType, apply};
use libfuzzer_sys::fuzz_target;

const KINDS: [&str; 6] = ["Pod", "Deployment", "Service", "DaemonSet", "ConfigMap", "Node"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let ty = match sel % 3 {
        0 => PatchType::Json,
        1 => PatchType::Merge,
        _ => PatchType::Strategic,
    };
    let kind = KINDS[(sel as usize / 3) % KINDS.len()];
    let (doc, patch) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"{}"[..], rest),
    };
    let (Ok(mut doc), Ok(patch)) =
        (serde_json::from_slice::<serde_json::Value>(doc), serde_json::from_slice::<serde_json::Value>(patch))
    else {
        return;
    };
    if apply(kind, &mut doc, patch, ty).is_ok() {
        // The result is stored as JSON: it serialises and reads back the same.
        let text = serde_json::to_vec(&doc).expect("a patched object serialises");
        let back: serde_json::Value = serde_json::from_slice(&text).expect("and reads back");
        assert_eq!(back, doc);
    }
});
