//! `kedge-agent`: the node agent. This is the skeleton the CRI shim, the
//! local cache and the MQTT link grow into; today it only identifies itself.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("kedge-agent {}", kedge_common::VERSION);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "kedge-agent {}: the node agent is not implemented yet (only --version); see the open issues",
                kedge_common::VERSION
            );
            ExitCode::from(2)
        }
    }
}
