//! The API's strict JSON decoder (controller/src/validate/strict.rs), which
//! notes duplicated keys: it must take exactly what serde_json takes, and
//! make the same value of it (the last of duplicated keys wins, as there).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = kedge_controller::validate::strict::parse(data);
    let plain = serde_json::from_slice::<serde_json::Value>(data);
    match (strict, plain) {
        (Ok((v, dups)), Ok(p)) => {
            assert_eq!(v, p, "strict and plain decoding differ");
            let _ = dups;
        }
        (Err(_), Err(_)) => {}
        (s, p) => panic!("strict {:?} but serde_json {:?}", s.map(|_| ()), p.map(|_| ())),
    }
});
