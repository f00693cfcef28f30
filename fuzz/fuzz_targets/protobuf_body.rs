//! A Kubernetes protobuf request body (what `kubectl create deployment`
//! and other typed clients send), decoded to JSON (controller/src/api/proto.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = kedge_controller::api::fuzzing::protobuf_body(data) {
        // What came out is JSON the rest of the API can take.
        let text = serde_json::to_vec(&v).expect("the decoded body serialises");
        assert!(serde_json::from_slice::<serde_json::Value>(&text).is_ok());
    }
});
