//! The fleet envelope (common/src/envelope.rs) as it arrives from the
//! broker: any bytes, through the size cap, the version check, the
//! signature check and the sealed box, for every purpose.
#![no_main]

use kedge_common::envelope::{self, DEFAULT_MAX_PAYLOAD};
use kedge_common::sign::Purpose;
use kedge_fuzz::keys;
use libfuzzer_sys::fuzz_target;

const PURPOSES: [Purpose; 10] = [
    Purpose::Desired,
    Purpose::Network,
    Purpose::Join,
    Purpose::JoinAnswer,
    Purpose::Report,
    Purpose::Event,
    Purpose::Presence,
    Purpose::Rotate,
    Purpose::RotateProof,
    Purpose::SessionOpen,
];

fuzz_target!(|data: &[u8]| {
    let (key, seal) = keys();
    let public = key.public();
    let _ = envelope::decode::<ciborium::Value>(data, DEFAULT_MAX_PAYLOAD);
    // Nothing the fuzzer writes carries this run's signature.
    for purpose in PURPOSES {
        let verified =
            envelope::decode_opened::<ciborium::Value>(data, DEFAULT_MAX_PAYLOAD, purpose, &public, Some(seal));
        assert!(verified.is_err(), "a forged {purpose:?} envelope verified");
    }
    // A cap below the payload's size is refused before decoding.
    if !data.is_empty() {
        assert!(envelope::decode::<ciborium::Value>(data, data.len() - 1).is_err(), "the cap was not applied");
    }
});
