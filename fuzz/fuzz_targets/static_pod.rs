//! A static pod manifest file on the node (agent/src/pods/manifests.rs):
//! YAML or JSON, validated into the pod the node runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = kedge_agent::pods::manifests::parse(Path::new("/etc/kedge/manifests/x.yaml"), data, "n1") {
        // A pod that passed validation is one the wire can carry.
        let cbor = kedge_common::envelope::encode(&p.pod).expect("a valid pod encodes");
        let back: kedge_common::pod::Pod = kedge_common::envelope::decode(&cbor, usize::MAX).expect("and decodes");
        assert_eq!(back.metadata.name, p.pod.metadata.name);
    }
});
