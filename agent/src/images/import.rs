//! `kedge-agent image import FILE`: OCI image-layout archives (as written by
//! `skopeo copy … oci-archive:`, `images/busybox/build.sh`, BuildKit) and
//! `docker save` tarballs, for sites without a registry. The archive is read
//! once, front to back; every blob is verified against its digest as it is
//! stored.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use libcontainer::oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use super::{ImageError, ImageStore, Result, io_err, normalize};

/// Largest metadata file (index.json, manifest.json) read into memory.
const MAX_METADATA: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: not an OCI image layout or docker save archive (no index.json or manifest.json)")]
    UnknownFormat { path: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: no image in it is for this node's platform ({platform})")]
    NoPlatform { path: String, platform: String },
}

/// The OCI platform of this node: (architecture, variant).
pub fn node_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    }
}

pub fn platform_matches(arch: &str, variant: Option<&str>) -> bool {
    let (a, v) = node_platform();
    arch == a && (v.is_none() || variant.is_none() || variant == v || (a == "arm64" && variant == Some("v8")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn invalid(path: &Path, message: impl Into<String>) -> ImageError {
    ImportError::Invalid { path: path.display().to_string(), message: message.into() }.into()
}

pub(super) fn import_archive(store: &ImageStore, archive_path: &Path) -> Result<Vec<String>> {
    let file = File::open(archive_path).map_err(io_err(archive_path))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut metadata: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Files stored by content, by their path in the archive (docker save names
    // layers `<id>/layer.tar`, so the digest is only known after reading).
    let mut stored: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let entries = archive.entries().map_err(|e| invalid(archive_path, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(archive_path, format!("corrupt archive: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| invalid(archive_path, format!("bad path: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        match name.as_str() {
            "index.json" | "manifest.json" | "oci-layout" | "repositories" => {
                if entry.size() > MAX_METADATA {
                    return Err(invalid(archive_path, format!("{name} is larger than {MAX_METADATA} bytes")));
                }
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).map_err(io_err(archive_path))?;
                metadata.insert(name, buf);
            }
            _ => {
                let expected = name.strip_prefix("blobs/sha256/").map(|hex| format!("sha256:{hex}"));
                let stored_as = store.put_blob(&mut entry, expected.as_deref()).map_err(|e| match e {
                    ImageError::DigestMismatch { expected, actual } => {
                        invalid(archive_path, format!("{name}: content hashes to {actual}, not {expected}"))
                    }
                    other => other,
                })?;
                stored.insert(name, stored_as);
            }
        }
    }
    if let Some(index) = metadata.get("index.json") {
        let docker_tags = metadata.get("manifest.json").map(|m| docker_tags(archive_path, m)).transpose()?;
        import_oci(store, archive_path, index, docker_tags.unwrap_or_default())
    } else if let Some(manifest) = metadata.get("manifest.json") {
        import_docker(store, archive_path, manifest, &stored)
    } else {
        Err(ImportError::UnknownFormat { path: archive_path.display().to_string() }.into())
    }
}

fn docker_entries(path: &Path, bytes: &[u8]) -> Result<Vec<DockerManifestEntry>> {
    serde_json::from_slice(bytes).map_err(|e| invalid(path, format!("manifest.json: {e}")))
}

/// Config path → tags, from the `manifest.json` newer Docker writes beside
/// its OCI layout.
fn docker_tags(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Vec<String>>> {
    Ok(docker_entries(path, bytes)?.into_iter().map(|e| (e.config, e.repo_tags)).collect())
}

fn import_oci(
    store: &ImageStore,
    path: &Path,
    index: &[u8],
    docker_tags: BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>> {
    let index: ImageIndex = serde_json::from_slice(index).map_err(|e| invalid(path, format!("index.json: {e}")))?;
    let mut names = Vec::new();
    let (arch, variant) = node_platform();
    for desc in index.manifests() {
        let annotations = desc.annotations().clone().unwrap_or_default();
        let mut refs: Vec<String> = ["io.containerd.image.name", "org.opencontainers.image.ref.name"]
            .iter()
            .filter_map(|k| annotations.get(*k))
            .filter(|n| n.contains(['/', ':']) || n.contains('.'))
            .take(1)
            .cloned()
            .collect();
        let manifest_digest = if is_index(desc.media_type()) {
            select_platform(store, path, desc.digest().as_ref())?
        } else {
            desc.digest().to_string()
        };
        let manifest: ImageManifest = read_json(store, path, &manifest_digest)?;
        let config_digest = manifest.config().digest().to_string();
        let config: libcontainer::oci_spec::image::ImageConfiguration = read_json(store, path, &config_digest)?;
        let image_arch = config.architecture().to_string();
        if !platform_matches(&image_arch, config.variant().as_deref()) {
            tracing::warn!(image = ?refs, arch = %image_arch, "skipping an image built for another platform");
            continue;
        }
        if let Some(tags) = docker_tags.get(&format!("blobs/sha256/{}", config_digest.trim_start_matches("sha256:"))) {
            refs.extend(tags.iter().cloned());
        }
        for layer in manifest.layers() {
            if !store.has_blob(layer.digest().as_ref()) {
                return Err(invalid(path, format!("layer {} is missing from the archive", layer.digest())));
            }
        }
        if refs.is_empty() {
            // An unnamed image is still usable by ID, as `ctr import` allows.
            refs.push(format!("import-{}", &config_digest.trim_start_matches("sha256:")[..12]));
        }
        for r in &refs {
            store.tag(r, &manifest_digest)?;
            names.push(normalize(r));
        }
        store.set_pinned(&refs[0], true)?;
    }
    if names.is_empty() {
        let platform = variant.map(|v| format!("linux/{arch}/{v}")).unwrap_or(format!("linux/{arch}"));
        return Err(ImportError::NoPlatform { path: path.display().to_string(), platform }.into());
    }
    Ok(names)
}

fn is_index(mt: &MediaType) -> bool {
    match mt {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s == "application/vnd.docker.distribution.manifest.list.v2+json",
        _ => false,
    }
}

/// The manifest of a multi-platform index that fits this node.
pub(super) fn select_platform(store: &ImageStore, path: &Path, index_digest: &str) -> Result<String> {
    let index: ImageIndex = read_json(store, path, index_digest)?;
    select_from_index(&index).ok_or_else(|| {
        let (arch, _) = node_platform();
        ImportError::NoPlatform { path: path.display().to_string(), platform: format!("linux/{arch}") }.into()
    })
}

pub(super) fn select_from_index(index: &ImageIndex) -> Option<String> {
    index
        .manifests()
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && platform_matches(&p.architecture().to_string(), p.variant().as_deref())
            })
        })
        .map(|m| m.digest().to_string())
}

fn read_json<T: for<'de> Deserialize<'de>>(store: &ImageStore, path: &Path, digest: &str) -> Result<T> {
    let blob = store.blob_path(digest)?;
    let bytes =
        std::fs::read(&blob).map_err(|_| invalid(path, format!("blob {digest} is missing from the archive")))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(path, format!("blob {digest}: {e}")))
}

fn import_docker(
    store: &ImageStore,
    path: &Path,
    manifest: &[u8],
    stored: &BTreeMap<String, (String, u64)>,
) -> Result<Vec<String>> {
    let lookup = |name: &str| {
        stored
            .get(name)
            .cloned()
            .ok_or_else(|| invalid(path, format!("manifest.json names {name}, which is not in the archive")))
    };
    let mut names = Vec::new();
    for entry in docker_entries(path, manifest)? {
        let (config_digest, config_size) = lookup(&entry.config)?;
        let config: libcontainer::oci_spec::image::ImageConfiguration = read_json(store, path, &config_digest)?;
        if !platform_matches(&config.architecture().to_string(), config.variant().as_deref()) {
            tracing::warn!(image = ?entry.repo_tags, "skipping an image built for another platform");
            continue;
        }
        let mut layers = Vec::new();
        for l in &entry.layers {
            let (digest, size) = lookup(l)?;
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest,
                "size": size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layers,
        });
        let (manifest_digest, _) = store.put_json(&manifest)?;
        let mut tags = entry.repo_tags.clone();
        if tags.is_empty() {
            tags.push(format!("import-{}", &config_digest.trim_start_matches("sha256:")[..12]));
        }
        for t in tags {
            store.tag(&t, &manifest_digest)?;
            names.push(normalize(&t));
        }
    }
    if names.is_empty() {
        let (arch, _) = node_platform();
        return Err(
            ImportError::NoPlatform { path: path.display().to_string(), platform: format!("linux/{arch}") }.into()
        );
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_this_nodes_platform_from_an_index() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let entry = |arch: &str, variant: Option<&str>, c: char| {
            let mut p = serde_json::json!({"architecture": arch, "os": "linux"});
            if let Some(v) = variant {
                p["variant"] = serde_json::json!(v);
            }
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(c), "size": 1, "platform": p})
        };
        let index: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [entry("amd64", None, 'a'), entry("arm64", Some("v8"), 'b'), entry("arm", Some("v7"), 'c'), entry("s390x", None, 'd')],
        }))
        .expect("index parses");
        let want = match node_platform().0 {
            "amd64" => Some(digest('a')),
            "arm64" => Some(digest('b')),
            "arm" => Some(digest('c')),
            _ => None,
        };
        assert_eq!(select_from_index(&index), want);
        let only_s390: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [entry("s390x", None, 'd')],
        }))
        .expect("index parses");
        assert_eq!(select_from_index(&only_s390), None, "no fitting platform, no pick");
    }
}
