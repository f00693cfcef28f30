//! Off loopback the API is HTTPS with a bearer token; the kubeconfig the
//! controller writes carries both, and they survive a restart.

use anyhow::Result;
use kedge_tests::{Controller, Kubectl, kubectl_path, require};

#[test]
fn tls_and_token_guard_the_api() -> Result<()> {
    let Some(bin) = kubectl_path() else {
        require(false, "kubectl is not installed");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");

    // A wildcard listen is not loopback: TLS and the token are switched on.
    // (The test client still connects through 127.0.0.1.)
    let mut ctl = Controller::start_on(&data, "0.0.0.0:0")?;
    let kubeconfig = std::fs::read_to_string(ctl.kubeconfig())?;
    assert!(kubeconfig.contains("server: https://127.0.0.1:"), "{kubeconfig}");
    assert!(kubeconfig.contains("certificate-authority-data:") && kubeconfig.contains("token:"), "{kubeconfig}");
    let k = Kubectl { bin: bin.clone(), kubeconfig: ctl.kubeconfig(), cache: dir.path().join("cache") };
    assert!(k.ok(&["get", "ns"])?.contains("kube-system"));

    // A wrong token: 401.
    let no_token: String = kubeconfig
        .lines()
        .map(|l| if l.contains("token:") { "    token: not-the-token".to_owned() } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n");
    let anon_path = dir.path().join("anon.yaml");
    std::fs::write(&anon_path, no_token)?;
    let anon = Kubectl { bin: bin.clone(), kubeconfig: anon_path, cache: dir.path().join("cache2") };
    let err = anon.fails(&["get", "ns"])?;
    assert!(err.contains("Unauthorized") || err.contains("provide credentials"), "{err}");

    // Without the CA: the certificate is not trusted.
    let no_ca: String =
        kubeconfig.lines().filter(|l| !l.contains("certificate-authority-data")).collect::<Vec<_>>().join("\n");
    let untrusted_path = dir.path().join("untrusted.yaml");
    std::fs::write(&untrusted_path, no_ca)?;
    let untrusted = Kubectl { bin: bin.clone(), kubeconfig: untrusted_path, cache: dir.path().join("cache3") };
    let err = untrusted.fails(&["get", "ns"])?;
    assert!(err.contains("certificate"), "{err}");

    // Restart on the same port and data dir, forced TLS on loopback: the old
    // kubeconfig (same CA, same token) keeps working.
    let saved = dir.path().join("saved.yaml");
    std::fs::copy(ctl.kubeconfig(), &saved)?;
    let port = ctl.addr.rsplit(':').next().unwrap_or_default().to_owned();
    ctl.terminate()?;
    drop(ctl);
    let _ctl = Controller::start_with(&data, &format!("127.0.0.1:{port}"), &["--tls"])?;
    let again = Kubectl { bin, kubeconfig: saved, cache: dir.path().join("cache4") };
    assert!(again.ok(&["get", "ns"])?.contains("default"));
    Ok(())
}
