//! The agent's config file (`/etc/kedge/agent.yaml`, or a file flashed on a
//! boot partition): YAML of flag names to values (agent/src/config.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let known: Vec<String> =
        ["broker", "node-name", "data-dir", "label", "taint", "insecure-registry", "join-token", "max-pods"]
            .map(String::from)
            .to_vec();
    if let Ok(args) = kedge_agent::config::args_from_yaml(text, Path::new("agent.yaml"), &known) {
        for a in args {
            let a = a.to_string_lossy().into_owned();
            let flag = a.strip_prefix("--").expect("every argument is a long flag");
            let name = flag.split('=').next().unwrap_or_default();
            assert!(known.iter().any(|k| k == name), "{a} is not a known flag");
        }
    }
});
