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
    #[error("the fleet signing key {path}: {reason}")]
    Signing { path: PathBuf, reason: kedge_common::sign::SignError },
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
    let token_path = data_dir.join("token");
    let (server_config, ca_pem) = serving_config(data_dir, names, &[b"http/1.1"])?;
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            let t = random_token();
            write_private(&token_path, t.as_bytes())?;
            t
        }
    };
    Ok(TlsMaterial { ca_pem, token, server_config })
}

/// A server configuration whose certificate, signed by the cluster CA
/// (loaded or created under `data_dir`), covers `names` and is renewed
/// before it ends; `alpn`: the protocols it offers. Returns it with the CA
/// certificate (PEM).
pub fn serving_config(
    data_dir: &Path,
    names: &[String],
    alpn: &[&[u8]],
) -> Result<(Arc<rustls::ServerConfig>, String), TlsError> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let (key_path, crt_path) = (dir.join("ca.key"), dir.join("ca.crt"));

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
    // Same subject and key as the stored CA certificate, so what it signs
    // verifies against that certificate.
    let serving = Arc::new(Serving {
        issuer: Issuer::new(ca_params()?, ca_key),
        names: names.to_vec(),
        current: std::sync::Mutex::new(None),
    });
    serving.current()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(serving);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(cfg), ca_pem))
}

/// How long a serving certificate is valid, and how long before its end a
/// new one is signed (K3s: one year, renewed within 90 days of expiry).
const SERVING_DAYS: i32 = 365;
const RENEW_DAYS_BEFORE: i64 = 90;

/// The serving certificate: signed at start, and again by the handshake
/// that finds it within [`RENEW_DAYS_BEFORE`] of its end, so a controller
/// that runs for years never serves an expired one.
struct Serving {
    issuer: Issuer<'static, KeyPair>,
    names: Vec<String>,
    /// The certificate and the Unix time after which it is renewed.
    current: std::sync::Mutex<Option<(Arc<rustls::sign::CertifiedKey>, i64)>>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").field("names", &self.names).finish_non_exhaustive()
    }
}

impl Serving {
    /// The certificate to serve, signing a new one when it is due.
    fn current(&self) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let now = jiff::Timestamp::now().as_second();
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, _)) = cur.as_ref().filter(|(_, renew_at)| now < *renew_at) {
            return Ok(key.clone());
        }
        let (key, renew_at) = self.sign()?;
        *cur = Some((key.clone(), renew_at));
        Ok(key)
    }

    fn sign(&self) -> Result<(Arc<rustls::sign::CertifiedKey>, i64), TlsError> {
        let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
        let day = |d: jiff::civil::Date| rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8);
        let span = |days: i32| jiff::Span::new().days(days);
        let (from, until) =
            (today.checked_sub(span(1)).unwrap_or(today), today.checked_add(span(SERVING_DAYS)).unwrap_or(today));
        let mut sp = CertificateParams::new(self.names.clone())?;
        sp.distinguished_name.push(DnType::CommonName, "kedge-controller");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        // A day of slack before today for clocks a little behind.
        sp.not_before = day(from);
        sp.not_after = day(until);
        let server_key = KeyPair::generate()?;
        let server_cert = sp.signed_by(&server_key, &self.issuer)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
        let key = rustls::sign::CertifiedKey::new(vec![CertificateDer::from(server_cert.der().to_vec())], signer);
        let renew_at = jiff::Timestamp::now().as_second() + (i64::from(SERVING_DAYS) - RENEW_DAYS_BEFORE) * 86_400;
        tracing::info!(until = %until, names = ?self.names, "signed a serving certificate");
        Ok((Arc::new(key), renew_at))
    }
}

impl rustls::server::ResolvesServerCert for Serving {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        match self.current() {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the serving certificate");
                self.current.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(k, _)| k.clone())
            }
        }
    }
}

/// The controller's fleet signing key (design.md §3a), made on first start
/// and kept beside the CA (`DATA/tls/signing.key`, PKCS#8, 0600); its public
/// half goes to `DATA/tls/signing.pub` for tokens and operators to pin.
pub fn signing_key(data_dir: &Path) -> Result<kedge_common::sign::SigningKey, TlsError> {
    use kedge_common::sign::SigningKey;
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let (path, public) = (dir.join("signing.key"), dir.join("signing.pub"));
    let key = match std::fs::read(&path) {
        Ok(der) => SigningKey::from_pkcs8(&der).map_err(|e| TlsError::Signing { path: path.clone(), reason: e })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, der) = SigningKey::generate().map_err(|e| TlsError::Signing { path: path.clone(), reason: e })?;
            write_private(&path, &der)?;
            tracing::info!(path = %path.display(), public = %key.public(), "generated the fleet signing key");
            key
        }
        Err(e) => return Err(TlsError::Io { path, source: e }),
    };
    let text = format!("{}\n", key.public());
    if std::fs::read_to_string(&public).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&public, text).map_err(io(&public))?;
    }
    Ok(key)
}

/// The names a serving certificate covers: loopback, the listen address,
/// this host's name, and any extra `--tls-san`.
pub fn serving_names(listen: IpAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    match listen.is_unspecified() {
        // Every address clients may use: those of this host's interfaces.
        true => names.extend(host_addresses().iter().map(IpAddr::to_string)),
        false => names.push(listen.to_string()),
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

/// The addresses of this host's interfaces (IPv6 link-local ones left out:
/// they need a zone, which a certificate cannot name).
#[allow(unsafe_code)]
pub(crate) fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that stays valid until
    // freeifaddrs; each ifa_addr is null or points to a sockaddr of the
    // family it names, read as that family's struct.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while let Some(ifa) = cur.as_ref() {
            if let Some(sa) = ifa.ifa_addr.as_ref() {
                match i32::from(sa.sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        if ip.segments()[0] & 0xffc0 != 0xfe80 {
                            out.push(IpAddr::V6(ip));
                        }
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}
