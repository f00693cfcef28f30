//! TLS and token material for listeners that are not loopback-only.
//!
//! On first use a private CA (ECDSA P-256, `DATA/tls/ca.{crt,key}`) and a
//! bearer token (`DATA/token`) are generated and kept; each start signs a
//! fresh serving certificate for the configured names with that CA. The
//! kubeconfig carries the CA and the token, as K3s's `k3s.yaml` does.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("tls configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a TLS listener and its kubeconfig need.
pub struct TlsMaterial {
    pub ca_pem: String,
    pub token: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// Writes a file readable by its owner only (atomically).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "kedge-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Loads (or creates) the CA and token under `data_dir` and signs a serving
/// certificate for `names` (DNS names or IP addresses).
pub fn load_or_create(data_dir: &Path, names: &[String]) -> Result<TlsMaterial, TlsError> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let (key_path, crt_path, token_path) = (dir.join("ca.key"), dir.join("ca.crt"), data_dir.join("token"));

    let (ca_key, ca_pem) = match (std::fs::read_to_string(&key_path), std::fs::read_to_string(&crt_path)) {
        (Ok(k), Ok(c)) => (KeyPair::from_pem(&k)?, c),
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_private(&crt_path, cert.pem().as_bytes())?;
            tracing::info!(path = %crt_path.display(), "generated a new cluster CA");
            (key, cert.pem())
        }
    };
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            let t = random_token();
            write_private(&token_path, t.as_bytes())?;
            t
        }
    };

    // Same subject and key as the stored CA certificate, so what it signs
    // verifies against that certificate.
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut sp = CertificateParams::new(names.to_vec())?;
    sp.distinguished_name.push(DnType::CommonName, "kedge-controller");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let server_key = KeyPair::generate()?;
    let server_cert = sp.signed_by(&server_key, &issuer)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial { ca_pem, token, server_config: Arc::new(cfg) })
}

/// The names a serving certificate covers: loopback, the listen address,
/// this host's name, and any extra `--tls-san`.
pub fn serving_names(listen: IpAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !listen.is_unspecified() {
        names.push(listen.to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_owned());
        }
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}
