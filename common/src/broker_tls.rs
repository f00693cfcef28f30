//! TLS to the broker (`mqtts://`): the rustls client configuration that
//! agents and the controller connect with. The broker is trusted through a
//! CA file (`--broker-ca`: the controller's `DATA/tls/ca.crt` for the
//! embedded broker, a customer's CA for theirs) or, without one, the system's
//! roots (a cloud broker with a public certificate). A client certificate is
//! shown to brokers that ask for one (Mosquitto's `require_certificate`).
//!
//! TLS keeps the link's content from the network and lets a broker tell its
//! clients apart; what a node runs is still trusted only for the
//! controller's signature (design.md §3a).

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum BrokerTlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("no CA to trust the broker with: the system has no root certificates ({0}); give --broker-ca")]
    NoRoots(String),
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> BrokerTlsError {
    BrokerTlsError::File { path: path.to_path_buf(), message: message.to_string() }
}

/// The certificates of a PEM file; none is an error.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerTlsError> {
    let pem = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "holds no certificate (expected PEM `BEGIN CERTIFICATE`)"));
    }
    Ok(certs)
}

/// A client configuration trusting `ca` (PEM file; `None`: the system's
/// roots) and, with `client` (certificate chain and key, PEM files),
/// showing that certificate.
pub fn client_config(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, BrokerTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map_or("none found".to_owned(), ToString::to_string);
                return Err(BrokerTlsError::NoRoots(why));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, format!("no private key: {e}")))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("kedge-broker-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let garbage = dir.join("ca.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let err = client_config(Some(&garbage), None).expect_err("garbage CA").to_string();
        assert!(err.contains("ca.pem") && err.contains("no certificate"), "{err}");
        let missing = dir.join("missing.pem");
        let err = client_config(Some(&missing), None).expect_err("missing CA").to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
