//! `kedge-agent` command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("kedge-agent {}", kedge_common::VERSION);
            ExitCode::SUCCESS
        }
        _ => ExitCode::from(2),
    }
}
