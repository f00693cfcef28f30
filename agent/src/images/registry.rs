//! Pulling from an OCI / Docker registry (distribution API v2): anonymous,
//! basic and bearer-token auth, multi-platform index selection for this
//! node, every blob verified against its digest. Registries on loopback (and
//! those named with `--insecure-registry`) are spoken to over plain HTTP, as
//! Docker and containerd do.

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use libcontainer::oci_spec::image::{ImageIndex, ImageManifest};

use super::import::select_from_index;
use super::{ImageError, ImageStore, Reference, Result};

const MAX_MANIFEST: u64 = 4 << 20;
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{registry}: registry unreachable: {message}")]
    Unreachable { registry: String, message: String },
    #[error("{url}: {status} {reason}")]
    Status { url: String, status: u16, reason: String },
    #[error("{image}: {message}")]
    Invalid { image: String, message: String },
    #[error("{image}: no manifest for this node's platform (linux/{arch})")]
    NoPlatform { image: String, arch: String },
}

#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

pub struct Puller<'a> {
    store: &'a ImageStore,
    agent: ureq::Agent,
    insecure: Vec<String>,
    creds: Option<Credentials>,
    token: Option<String>,
}

fn is_loopback(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .map(|(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
        .unwrap_or(host);
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `a="b",c="d"` parameters of a WWW-Authenticate challenge.
fn challenge_params(header: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = header;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_string(), &quoted[end + 1..]),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((key, value));
        rest = next;
    }
    out
}

/// The `message` of a registry's JSON error body, or the body itself.
fn registry_reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let errs = v.get("errors")?.as_array()?;
            let msgs: Vec<String> = errs
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                    let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    format!("{code}: {msg}").trim_matches([' ', ':']).to_string()
                })
                .collect();
            Some(msgs.join("; "))
        })
        .unwrap_or_else(|| body.chars().take(200).collect::<String>().trim().to_string())
}

impl<'a> Puller<'a> {
    pub fn new(store: &'a ImageStore, insecure: Vec<String>, creds: Option<Credentials>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(30 * 60)))
            .build()
            .into();
        Puller { store, agent, insecure, creds, token: None }
    }

    fn base(&self, r: &Reference) -> String {
        let host = if r.registry == "docker.io" { "registry-1.docker.io" } else { r.registry.as_str() };
        let scheme = if is_loopback(host) || self.insecure.iter().any(|h| h == host) { "http" } else { "https" };
        format!("{scheme}://{host}/v2/{}", r.repository)
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
            )
        })
    }

    fn send(&self, url: &str, accept: Option<&str>) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self.agent.get(url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        } else if let Some(b) = self.basic() {
            req = req.header("Authorization", &b);
        }
        req.call().map_err(|e| {
            let registry = url.split('/').nth(2).unwrap_or(url).to_string();
            PullError::Unreachable { registry, message: e.to_string() }.into()
        })
    }

    /// GET with one round of auth negotiation on 401.
    fn get(&mut self, r: &Reference, url: &str, accept: Option<&str>) -> Result<ureq::http::Response<ureq::Body>> {
        let resp = self.send(url, accept)?;
        if resp.status() != 401 || self.token.is_some() {
            return Ok(resp);
        }
        let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if challenge.to_ascii_lowercase().starts_with("bearer") {
            self.token = Some(self.fetch_token(r, &challenge["bearer".len()..])?);
            return self.send(url, accept);
        }
        Ok(resp)
    }

    fn fetch_token(&self, r: &Reference, params: &str) -> Result<String> {
        let params = challenge_params(params);
        let get = |k: &str| params.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| PullError::Invalid {
            image: r.to_string(),
            message: "bearer challenge without realm".into(),
        })?;
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", r.repository));
        let mut req = self.agent.get(&realm).query("scope", &scope);
        if let Some(service) = get("service") {
            req = req.query("service", &service);
        }
        if let Some(b) = self.basic() {
            req = req.header("Authorization", &b);
        }
        let mut resp =
            req.call().map_err(|e| PullError::Unreachable { registry: realm.clone(), message: e.to_string() })?;
        let body = resp.body_mut().with_config().limit(MAX_MANIFEST).read_to_string().unwrap_or_default();
        if resp.status() != 200 {
            return Err(PullError::Status {
                url: realm,
                status: resp.status().as_u16(),
                reason: registry_reason(&body),
            }
            .into());
        }
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| PullError::Invalid { image: r.to_string(), message: format!("token response: {e}") })?;
        v.get("token").or_else(|| v.get("access_token")).and_then(|t| t.as_str()).map(str::to_string).ok_or_else(|| {
            PullError::Invalid { image: r.to_string(), message: "token response has no token".into() }.into()
        })
    }

    fn checked(url: &str, resp: &mut ureq::http::Response<ureq::Body>) -> Result<()> {
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let body = resp.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
        let reason = match registry_reason(&body) {
            r if r.is_empty() => resp.status().canonical_reason().unwrap_or("").to_string(),
            r => r,
        };
        Err(PullError::Status { url: url.to_string(), status, reason }.into())
    }

    /// Fetches a manifest (or index) and stores its exact bytes.
    fn manifest(&mut self, r: &Reference, reference: &str) -> Result<(String, Vec<u8>)> {
        let url = format!("{}/manifests/{reference}", self.base(r));
        let mut resp = self.get(r, &url, Some(ACCEPT))?;
        Self::checked(&url, &mut resp)?;
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| PullError::Unreachable { registry: r.registry.clone(), message: e.to_string() })?;
        let expected = reference.starts_with("sha256:").then_some(reference);
        let (digest, _) = self.store.put_blob(bytes.as_slice(), expected)?;
        Ok((digest, bytes))
    }

    fn blob(&mut self, r: &Reference, digest: &str, size: u64) -> Result<()> {
        if self.store.has_blob(digest) {
            return Ok(());
        }
        let url = format!("{}/blobs/{digest}", self.base(r));
        let mut resp = self.get(r, &url, None)?;
        Self::checked(&url, &mut resp)?;
        let reader = resp.into_body().into_reader().take(size.saturating_add(1));
        self.store.put_blob(reader, Some(digest))?;
        Ok(())
    }

    /// Pulls `name` and tags it; returns the image ID (config digest).
    pub fn pull(&mut self, name: &str) -> Result<String> {
        let r = Reference::parse(name)?;
        let wanted = r.digest.clone().or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
        let (mut digest, mut bytes) = self.manifest(&r, &wanted)?;
        let image = r.to_string();
        if let Some(chosen) = index_choice(self.store, &image, &bytes)? {
            (digest, bytes) = self.manifest(&r, &chosen)?;
        }
        let manifest = parse_manifest(&image, &bytes)?;
        let config = manifest.config();
        self.blob(&r, config.digest().as_ref(), config.size())?;
        for layer in manifest.layers() {
            self.blob(&r, layer.digest().as_ref(), layer.size())?;
        }
        self.store.tag(&r.to_string(), &digest)?;
        Ok(config.digest().to_string())
    }
}

/// When a manifest response is an index, this node's manifest in it: its
/// digest, which must be sha256 (only that is checked against what the
/// registry sends next; anything else is refused, not taken unchecked).
pub(super) fn index_choice(store: &ImageStore, image: &str, bytes: &[u8]) -> Result<Option<String>> {
    let probe: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Json { what: format!("manifest of {image}"), source: e })?;
    if probe.get("manifests").is_none() {
        return Ok(None);
    }
    let index: ImageIndex =
        serde_json::from_slice(bytes).map_err(|e| ImageError::Json { what: format!("index of {image}"), source: e })?;
    let chosen = select_from_index(&index).ok_or_else(|| PullError::NoPlatform {
        image: image.to_string(),
        arch: super::import::node_platform().0.to_string(),
    })?;
    store.blob_path(&chosen)?;
    Ok(Some(chosen))
}

/// A manifest response that is not an index.
pub(super) fn parse_manifest(image: &str, bytes: &[u8]) -> Result<ImageManifest> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Json { what: format!("manifest of {image}"), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let p = challenge_params(
            r#" realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(p[0], ("realm".to_string(), "https://auth.docker.io/token".to_string()));
        assert_eq!(p[1].1, "registry.docker.io");
        assert_eq!(p[2].1, "repository:library/busybox:pull");
    }

    #[test]
    fn reasons_come_from_the_registry_body() {
        let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        assert_eq!(registry_reason(body), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(registry_reason("plain text"), "plain text");
    }

    #[test]
    fn loopback_registries_use_http() {
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:5000") && is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000") && !is_loopback("10.0.0.1"));
    }
}
