//! Static pods: one Pod manifest per `.yaml`/`.yml`/`.json` file in the
//! manifest folder, as with the kubelet's `staticPodPath`. The pod is named
//! `<name>-<node>` and its UID is a hash of the file's content, so an edit
//! replaces the pod and a removed file removes it. A file that stops parsing
//! keeps its last good pod running and is reported once per change.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kedge_common::pod::Pod;

use super::DesiredPod;

/// How static pods name their source (and their key in the local cache).
pub const SOURCE_PREFIX: &str = "file:";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid Pod manifest: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: kedge_common::pod::FieldError },
}

/// Parses one manifest file's bytes into the pod the node runs.
pub fn parse(path: &Path, bytes: &[u8], node: &str) -> Result<DesiredPod, ManifestError> {
    let mut pod: Pod = serde_yaml_ng::from_slice(bytes)
        .map_err(|e| ManifestError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
    pod.validate().map_err(|source| ManifestError::Invalid { path: path.to_path_buf(), source })?;
    if !node.is_empty() {
        pod.metadata.name = format!("{}-{node}", pod.metadata.name);
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &[node.as_bytes(), b"\0", path.as_os_str().as_encoded_bytes(), b"\0", bytes].concat(),
    );
    let h = crate::images::hex(digest.as_ref());
    let uid = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
    pod.metadata.uid = Some(uid.clone());
    // A file is deleted by removing it: a deletion grace written in one is not a deletion.
    pod.metadata.deletion_grace_period_seconds = None;
    Ok(DesiredPod { uid, pod, source: format!("{SOURCE_PREFIX}{}", path.display()) })
}

pub struct StaticSource {
    dir: PathBuf,
    node: String,
    /// File → (content, last good pod).
    files: BTreeMap<PathBuf, (Vec<u8>, Option<DesiredPod>)>,
}

impl StaticSource {
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        StaticSource { dir: dir.into(), node: node.into(), files: BTreeMap::new() }
    }

    /// Seeds the last good pods from the local cache: a file that is broken
    /// when the agent starts still has its pod (a removed file does not).
    pub fn with_cached(mut self, cached: impl IntoIterator<Item = DesiredPod>) -> Self {
        for d in cached {
            if let Some(path) = d.source.strip_prefix(SOURCE_PREFIX) {
                self.files.insert(PathBuf::from(path), (Vec::new(), Some(d)));
            }
        }
        self
    }

    /// Re-reads the folder; returns the desired pods when anything changed.
    pub fn scan(&mut self) -> Option<Vec<DesiredPod>> {
        let mut seen = BTreeMap::new();
        match fs::read_dir(&self.dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let path = e.path();
                    let manifest = path.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json");
                    let hidden = e.file_name().to_string_lossy().starts_with('.');
                    if manifest && !hidden && path.is_file() {
                        match fs::read(&path) {
                            Ok(bytes) => {
                                seen.insert(path, bytes);
                            }
                            Err(source) => {
                                tracing::warn!(error = %ManifestError::Read { path, source }, "static pod manifest unreadable")
                            }
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the manifest folder"),
        }
        let mut changed = seen.len() != self.files.len();
        let mut next = BTreeMap::new();
        for (path, bytes) in seen {
            let previous = self.files.remove(&path);
            let entry = match previous {
                Some((old, pod)) if old == bytes => (old, pod),
                previous => {
                    changed = true;
                    match parse(&path, &bytes, &self.node) {
                        Ok(d) => {
                            tracing::info!(file = %path.display(), pod = %d.pod.metadata.name, "static pod manifest loaded");
                            (bytes, Some(d))
                        }
                        Err(e) => {
                            let kept = previous.and_then(|(_, pod)| pod);
                            let note = if kept.is_some() { "; the pod keeps running as it was" } else { "" };
                            tracing::error!("{e}{note}");
                            (bytes, kept)
                        }
                    }
                }
            };
            next.insert(path, entry);
        }
        changed |= !self.files.is_empty();
        self.files = next;
        changed.then(|| self.files.values().filter_map(|(_, p)| p.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str =
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn edits_replace_the_pod_and_bad_edits_keep_the_last_good_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("web.yaml");
        fs::write(&file, WEB).expect("write");
        let mut src = StaticSource::new(dir.path(), "n1");
        let first = src.scan().expect("first scan reports the pod");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].pod.metadata.name, "web-n1");
        assert!(src.scan().is_none(), "nothing changed");

        fs::write(&file, WEB.replace("busybox", "busybox:1")).expect("write");
        let second = src.scan().expect("edit is noticed");
        assert_ne!(second[0].uid, first[0].uid, "an edited manifest is a new pod");

        fs::write(&file, "kind: Pod\nspec: [not, a, map").expect("write");
        let third = src.scan().expect("change reported");
        assert_eq!(third, second, "a broken edit keeps the last good pod");

        fs::remove_file(&file).expect("rm");
        assert_eq!(src.scan().expect("removal reported"), vec![]);
    }

    #[test]
    fn a_restarted_agent_keeps_the_cached_pod_of_a_broken_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("web.yaml");
        fs::write(&file, WEB).expect("write");
        let good = StaticSource::new(dir.path(), "n1").scan().expect("pods");
        fs::write(&file, "kind: Pod\nspec: [broken").expect("write");
        let restarted = StaticSource::new(dir.path(), "n1").with_cached(good.clone()).scan().expect("pods");
        assert_eq!(restarted, good, "the last accepted pod survives the restart");
        fs::remove_file(&file).expect("rm");
        let gone = StaticSource::new(dir.path(), "n1").with_cached(good).scan().expect("change");
        assert!(gone.is_empty(), "a removed file removes its pod, cached or not");
    }

    #[test]
    fn volume_files_are_text_under_data_and_base64_under_binary_data() {
        let yaml = format!(
            "{WEB}  volumes:\n  - name: cfg\n    configMap:\n      data: {{motd: aGk=}}\n      binaryData:\n        blob: |\n          AP/+\n          3q2+7w==\n  - name: tls\n    secret:\n      secretName: tls\n      data: {{user: admin}}\n      binaryData: {{key.der: MIIB}}\n"
        );
        let d = parse(Path::new("/m/v.yaml"), yaml.as_bytes(), "n").expect("valid");
        let files = |i: usize| -> BTreeMap<String, Vec<u8>> {
            let v = &d.pod.spec.volumes[i];
            let data = v.config_map.as_ref().or(v.secret.as_ref()).expect("data volume");
            data.files().map(|(k, v)| (k.to_string(), v.to_vec())).collect()
        };
        assert_eq!(
            files(0),
            BTreeMap::from([
                ("motd".into(), b"aGk=".to_vec()),
                ("blob".into(), vec![0, 0xff, 0xfe, 0xde, 0xad, 0xbe, 0xef])
            ]),
            "data is written as given, binaryData decoded"
        );
        assert_eq!(
            files(1),
            BTreeMap::from([("user".into(), b"admin".to_vec()), ("key.der".into(), vec![0x30, 0x82, 0x01])])
        );
        let bad = yaml.replace("MIIB", "not base64!");
        let err = parse(Path::new("/m/v.yaml"), bad.as_bytes(), "n").expect_err("invalid base64");
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let err = parse(Path::new("/m/x.yaml"), WEB.replace("image: busybox", "image: ''").as_bytes(), "n")
            .expect_err("empty image");
        assert_eq!(err.to_string(), "/m/x.yaml: spec.containers[0].image: Required value");
        let err = parse(Path::new("/m/y.yaml"), b"kind: Pod\nmetadata: 3\n", "n").expect_err("bad yaml");
        assert!(err.to_string().starts_with("/m/y.yaml: not a valid Pod manifest: metadata"), "{err}");
    }
}
