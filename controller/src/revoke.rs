//! `kedge-controller node revoke NAME`: takes a joined node's keys off its
//! Node (the `kedge.io/node-key` and `kedge.io/node-seal-key` annotations)
//! through the running controller's API, as any client would — with the
//! CA, token and address of the kubeconfig it wrote. From then on nothing
//! under the node's name is taken (`fleet::trust`) and nothing is sealed to
//! it; the Node stays (and goes NotReady) until deleted. The key never
//! joins again (`fleet::join`): the node comes back with a new token, for
//! which its agent makes a new key.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::fleet::trust::{NODE_KEY_ANNOTATION, REVOKED, SEAL_KEY_ANNOTATION};

/// The `server:` of the kubeconfig the controller wrote.
fn server(kubeconfig: &str) -> Option<&str> {
    kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server:")).map(str::trim)
}

pub fn revoke(data_dir: &Path, name: &str) -> Result<()> {
    let path = data_dir.join("kubeconfig.yaml");
    let kubeconfig = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is the controller running?)", path.display()))?;
    let server = server(&kubeconfig).with_context(|| format!("no server in {}", path.display()))?;
    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
    let mut token = None;
    if server.starts_with("https://") {
        let ca = std::fs::read(data_dir.join("tls/ca.crt")).context("reading the cluster CA")?;
        let ca = ureq::tls::Certificate::from_pem(&ca)?.to_owned();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca]))).build(),
        );
        token = Some(std::fs::read_to_string(data_dir.join("token")).context("reading the API token")?);
    }
    let agent: ureq::Agent = config.build().into();
    let patch =
        serde_json::json!({"metadata": {"annotations": {NODE_KEY_ANNOTATION: REVOKED, SEAL_KEY_ANNOTATION: null}}});
    let url = format!("{server}/api/v1/nodes/{name}");
    let mut req = agent.patch(&url).header("Content-Type", "application/merge-patch+json");
    if let Some(t) = &token {
        req = req.header("Authorization", format!("Bearer {}", t.trim()));
    }
    let mut resp = req.send(patch.to_string()).with_context(|| format!("PATCH {url}"))?;
    match resp.status().as_u16() {
        200 => Ok(()),
        404 => bail!("there is no node {name}"),
        code => bail!("PATCH {url}: {code} {}", resp.body_mut().read_to_string().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_of_a_written_kubeconfig() {
        let k = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: x\n";
        assert_eq!(super::server(k), Some("https://127.0.0.1:6443"));
        assert_eq!(super::server("nothing"), None);
    }
}
