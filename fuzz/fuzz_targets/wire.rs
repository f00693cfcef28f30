//! Every message the fleet link carries, with a body the fuzzer writes:
//! the harness signs (and seals) it with this run's keys, so the decoders
//! behind the signature check see the fuzzer's bytes as they would see a
//! genuine controller's or node's. The first byte picks the message.
#![no_main]

use kedge_common::envelope::{self, DEFAULT_MAX_PAYLOAD};
use kedge_common::network::ClusterNetwork;
use kedge_common::seal;
use kedge_common::session::{Dir, Frame, Opener, SessionOpen, Usage};
use kedge_common::sign::Purpose;
use kedge_common::wire::{self, Event, JoinAnswer, JoinRequest, NodeDesired, NodeReport, Presence, RotateRequest};
use kedge_fuzz::keys;
use libfuzzer_sys::fuzz_target;

/// `{v: 2, body: bytes, sig: bytes[, sealed: true]}` around `body` as given.
fn signed(body: &[u8], purpose: Purpose, sealed: bool) -> Vec<u8> {
    let (key, secret) = keys();
    let body = if sealed { seal::seal(&secret.public(), body).expect("seal") } else { body.to_vec() };
    let sig = key.sign(purpose, &body);
    let mut fields = vec![
        (ciborium::Value::Text("v".into()), ciborium::Value::Integer(2.into())),
        (ciborium::Value::Text("body".into()), ciborium::Value::Bytes(body)),
        (ciborium::Value::Text("sig".into()), ciborium::Value::Bytes(sig)),
    ];
    if sealed {
        fields.push((ciborium::Value::Text("sealed".into()), ciborium::Value::Bool(true)));
    }
    let mut out = Vec::new();
    ciborium::into_writer(&ciborium::Value::Map(fields), &mut out).expect("cbor");
    out
}

/// The unsigned forms the decoders also read (a node's own cache, version
/// 1 from older builds): `{v: 2, body: bytes}`, and `{v: 1, body: value}`
/// when `body` is one CBOR value.
fn unsigned(body: &[u8]) -> Vec<Vec<u8>> {
    let wrap = |v: u32, body: ciborium::Value| {
        let map = vec![
            (ciborium::Value::Text("v".into()), ciborium::Value::Integer(v.into())),
            (ciborium::Value::Text("body".into()), body),
        ];
        let mut out = Vec::new();
        ciborium::into_writer(&ciborium::Value::Map(map), &mut out).expect("cbor");
        out
    };
    let mut forms = vec![wrap(2, ciborium::Value::Bytes(body.to_vec()))];
    if let Ok(v) = ciborium::from_reader::<ciborium::Value, _>(body) {
        forms.push(wrap(1, v));
    }
    forms
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let (key, secret) = keys();
    let public = key.public();
    let cap = DEFAULT_MAX_PAYLOAD;
    match which % 12 {
        0 => {
            let p = signed(body, Purpose::Desired, true);
            let _ = wire::decode_opened_for::<NodeDesired>(&p, "n1", cap, Purpose::Desired, &public, Some(secret));
        }
        1 => {
            let p = signed(body, Purpose::Report, false);
            let _ = wire::decode_verified_for::<NodeReport>(&p, "n1", cap, Purpose::Report, &public);
            for p in unsigned(body) {
                let _ = wire::decode_for::<NodeReport>(&p, "n1", cap);
            }
        }
        2 => {
            let _ =
                envelope::decode_verified::<Event>(&signed(body, Purpose::Event, false), cap, Purpose::Event, &public);
        }
        3 => {
            let p = signed(body, Purpose::Join, false);
            let _ = envelope::decode_verified::<JoinRequest>(&p, cap, Purpose::Join, &public);
        }
        4 => {
            let p = signed(body, Purpose::JoinAnswer, false);
            let _ = envelope::decode_verified::<JoinAnswer>(&p, cap, Purpose::JoinAnswer, &public);
        }
        5 => {
            let p = signed(body, Purpose::Rotate, false);
            if let Ok(r) = envelope::decode_verified::<RotateRequest>(&p, cap, Purpose::Rotate, &public) {
                let _ = r.proven_key();
            }
        }
        6 => {
            let p = signed(body, Purpose::Network, false);
            let _ = envelope::decode_verified::<ClusterNetwork>(&p, cap, Purpose::Network, &public);
            // What a node cached itself, read back unsigned.
            for p in unsigned(body) {
                let _ = envelope::decode::<ClusterNetwork>(&p, cap);
            }
        }
        7 => {
            let p = signed(body, Purpose::SessionOpen, true);
            let _ = wire::decode_opened_for::<SessionOpen>(&p, "n1", cap, Purpose::SessionOpen, &public, Some(secret));
        }
        8 => {
            if let Ok(p) = Presence::from_json(body) {
                // A presence the fuzzer made cannot carry this run's signature.
                assert!(p.verify("n1", &public).is_err(), "a forged presence verified");
            }
        }
        9 => {
            if let Ok(f) = Frame::decode(body) {
                let _ = (f.data_len(), f.is_last());
                assert_eq!(Frame::decode(&f.encode()).map(|g| g.encode()).ok(), Some(f.encode()), "a frame re-encodes");
            }
        }
        10 => {
            let _ = Usage::from_cbor(body);
        }
        _ => {
            // A session's sealed frames, under a key the fuzzer does not hold.
            if let Ok(mut o) = Opener::new(&[7u8; 32], Dir::ToController, "0123456789abcdef", cap) {
                assert!(o.open(body).is_err(), "a frame opened without the session key");
            }
        }
    }
});
