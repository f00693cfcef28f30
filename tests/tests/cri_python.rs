//! The agent's CRI socket driven by a client nobody here wrote: Python's
//! `grpcio` (grpc-c's HTTP/2 stack, which sends the socket's path as the
//! `:authority`) runs `tests/python/cri_cycle.py`, a whole sandbox/container
//! cycle with stats, against a real `kedge-agent`. Needs root, and python3
//! with the pinned `grpcio` and `grpcio-tools` (`ensure_python_packages` in
//! scripts/packages.sh installs them into target/python; .ci/run does).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kedge_tests::agent::Agent;
use kedge_tests::workspace_root;

const BUSYBOX: &str = "kedge.local/busybox:latest";

/// PYTHONPATH with target/python (where scripts/packages.sh installs) first.
fn python_path() -> String {
    let ours = workspace_root().join("target/python").display().to_string();
    match std::env::var("PYTHONPATH") {
        Ok(p) if !p.is_empty() => format!("{ours}:{p}"),
        _ => ours,
    }
}

fn python_has_grpcio() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .env("PYTHONPATH", python_path())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The CRI's v1.proto that the agent's `k8s-cri` was generated from, found
/// through `cargo metadata` (so it follows the locked version).
fn cri_proto() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    let manifests: Vec<&str> = meta["packages"]
        .as_array()
        .context("no packages in cargo metadata")?
        .iter()
        .filter(|p| p["name"] == "k8s-cri")
        .filter_map(|p| p["manifest_path"].as_str())
        .collect();
    let [manifest] = manifests[..] else { bail!("expected one k8s-cri package, found {manifests:?}") };
    let proto = PathBuf::from(manifest).with_file_name("proto").join("v1.proto");
    if !proto.is_file() {
        bail!("{} is missing", proto.display());
    }
    Ok(proto)
}

#[test]
fn python_grpcio_client_runs_a_whole_cycle_on_the_cri_socket() -> Result<()> {
    if !kedge_tests::require(kedge_tests::is_root(), "root (the agent runs real containers)") {
        return Ok(());
    }
    if !kedge_tests::require(
        python_has_grpcio(),
        "python3 with grpcio and grpcio-tools (`. scripts/packages.sh; ensure_python_packages` installs them)",
    ) {
        return Ok(());
    }
    let proto = cri_proto()?;
    let tmp = tempfile::tempdir()?;
    let mut agent = Agent::new(tmp.path(), &[])?;
    agent.start()?;
    let socket = agent.socket.clone();
    agent.wait_for("the CRI socket", Duration::from_secs(20), || Ok(socket.exists().then_some(())))?;

    let out = Command::new("python3")
        .arg(workspace_root().join("tests/python/cri_cycle.py"))
        .arg("--socket")
        .arg(&socket)
        .arg("--proto")
        .arg(&proto)
        .args(["--image", BUSYBOX])
        .env("PYTHONPATH", python_path())
        .output()
        .context("running tests/python/cri_cycle.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().last() == Some("cri cycle ok"),
        "cri_cycle.py failed ({}):\n{stdout}\n{stderr}\nagent log:\n{}",
        out.status,
        agent.log()
    );
    // The script removed what it made.
    assert!(agent.ps()?.is_empty(), "left behind: {:?}", agent.ps());
    Ok(())
}
