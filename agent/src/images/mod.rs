//! The image store: content-addressed blobs (`blobs/sha256/<hex>`, as in an
//! OCI image layout), a table of references (`refs.json`), and every layer
//! unpacked once under `layers/<diff-id hex>`, ready to be an overlay
//! lower directory. Writers take a file lock, so `kedge-agent image import`
//! can run beside a running agent.

mod import;
pub use import::node_platform;
pub mod reference;
pub mod registry;
mod unpack;
pub(crate) use unpack::safe_join;
#[doc(hidden)]
pub mod fuzzing;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub use import::ImportError;
pub use reference::{Reference, normalize};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("blob {expected} failed verification: content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("unsupported digest {0:?} (only sha256 is supported)")]
    UnsupportedDigest(String),
    #[error("{what} is not valid JSON: {source}")]
    Json { what: String, source: serde_json::Error },
    #[error("layer {digest}: {message}")]
    Layer { digest: String, message: String },
    #[error("image {image} is in use by a container")]
    InUse { image: String },
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Pull(#[from] registry::PullError),
    #[error(transparent)]
    Reference(#[from] reference::InvalidReference),
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}

pub type Result<T> = std::result::Result<T, ImageError>;

/// One image as the CRI describes it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config digest (`sha256:…`), which is the image ID in the CRI.
    pub id: String,
    pub manifest_digest: String,
    pub refs: Vec<String>,
    /// Compressed size of config and layers.
    pub size: u64,
    pub config: ImageConfiguration,
    pub layers: Vec<Descriptor>,
    /// Imported from an archive (air-gapped): the disk-pressure image GC
    /// leaves it, as K3s pins the images it imports, for nothing could pull
    /// it again. An explicit `image rm` or `image prune` still removes it.
    pub pinned: bool,
}

impl Image {
    /// `docker.io/library/busybox@sha256:…` for each repository it is known by.
    pub fn repo_digests(&self) -> Vec<String> {
        let names: BTreeSet<String> = self
            .refs
            .iter()
            .filter_map(|r| Reference::parse(r).ok())
            .map(|r| format!("{}@{}", r.name(), self.manifest_digest))
            .collect();
        names.into_iter().collect()
    }

    pub fn repo_tags(&self) -> Vec<String> {
        self.refs.iter().filter(|r| !r.contains('@')).cloned().collect()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Refs {
    /// Normalised reference → manifest digest.
    refs: BTreeMap<String, String>,
    /// Manifest digests of pinned images ([`Image::pinned`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pinned: BTreeSet<String>,
}

pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(&layout))?;
        }
        Ok(ImageStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> Result<Flock<File>> {
        let path = self.root.join(".lock");
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| ImageError::Io { path, source: io::Error::from(e) })
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| ImageError::UnsupportedDigest(digest.into()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::UnsupportedDigest(digest.into()));
        }
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    /// Streams `reader` into the blob store, hashing as it goes; with
    /// `expected`, content that hashes differently is refused and not kept.
    pub fn put_blob(&self, mut reader: impl Read, expected: Option<&str>) -> Result<(String, u64)> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile_in(&tmp_dir)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::Io { path: tmp.1.clone(), source: e }),
            };
            ctx.update(&buf[..n]);
            tmp.0.write_all(&buf[..n]).map_err(io_err(&tmp.1))?;
            size += n as u64;
        }
        let digest = format!("sha256:{}", hex(ctx.finish().as_ref()));
        if let Some(expected) = expected {
            if expected != digest {
                let _ = fs::remove_file(&tmp.1);
                return Err(ImageError::DigestMismatch { expected: expected.into(), actual: digest });
            }
        }
        let dest = self.blob_path(&digest)?;
        tmp.0.sync_all().map_err(io_err(&tmp.1))?;
        fs::rename(&tmp.1, &dest).map_err(io_err(&dest))?;
        Ok((digest, size))
    }

    pub fn put_json(&self, value: &impl Serialize) -> Result<(String, u64)> {
        let bytes = serde_json::to_vec(value).map_err(|e| ImageError::Json { what: "blob".into(), source: e })?;
        self.put_blob(bytes.as_slice(), None)
    }

    fn read_blob_json<T: for<'de> Deserialize<'de>>(&self, digest: &str) -> Result<T> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Json { what: format!("blob {digest}"), source: e })
    }

    fn read_refs(&self) -> Result<Refs> {
        let path = self.root.join("refs.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::Json { what: path.display().to_string(), source: e }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Refs::default()),
            Err(e) => Err(ImageError::Io { path, source: e }),
        }
    }

    fn write_refs(&self, refs: &mut Refs) -> Result<()> {
        let Refs { refs: named, pinned } = refs;
        pinned.retain(|m| named.values().any(|n| n == m));
        let path = self.root.join("refs.json");
        let bytes = serde_json::to_vec_pretty(refs).map_err(|e| ImageError::Json { what: "refs".into(), source: e })?;
        crate::fsutil::write_atomic(&path, &bytes).map_err(io_err(&path))
    }

    /// Points `reference` at a manifest already in the blob store.
    pub fn tag(&self, reference: &str, manifest_digest: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut refs = self.read_refs()?;
        refs.refs.insert(normalize(reference), manifest_digest.to_string());
        self.write_refs(&mut refs)
    }

    /// Pins (or unpins) the image `name` resolves to ([`Image::pinned`]).
    pub fn set_pinned(&self, name: &str, pinned: bool) -> Result<()> {
        let image = self.resolve(name)?;
        let _lock = self.lock()?;
        let mut refs = self.read_refs()?;
        if pinned {
            refs.pinned.insert(image.manifest_digest);
        } else {
            refs.pinned.remove(&image.manifest_digest);
        }
        self.write_refs(&mut refs)
    }

    fn load(&self, manifest_digest: &str, refs: Vec<String>, pinned: bool) -> Result<Image> {
        let manifest: ImageManifest = self.read_blob_json(manifest_digest)?;
        let config_digest = manifest.config().digest().to_string();
        let config: ImageConfiguration = self.read_blob_json(&config_digest)?;
        let size = manifest.config().size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
        Ok(Image {
            id: config_digest,
            manifest_digest: manifest_digest.to_string(),
            refs,
            size,
            config,
            layers: manifest.layers().clone(),
            pinned,
        })
    }

    /// Every image, each with all the references that point at it.
    pub fn list(&self) -> Result<Vec<Image>> {
        let refs = self.read_refs()?;
        let mut by_manifest: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (r, m) in &refs.refs {
            by_manifest.entry(m).or_default().push(r.clone());
        }
        let mut out = Vec::new();
        for (m, names) in by_manifest {
            match self.load(m, names, refs.pinned.contains(m)) {
                Ok(img) => out.push(img),
                Err(e) => tracing::warn!(manifest = m, error = %e, "image store entry is unreadable; skipped"),
            }
        }
        Ok(out)
    }

    /// Finds an image by reference (normalised), by ID (`sha256:…`) or by
    /// an unambiguous ID prefix of at least 12 hex digits.
    pub fn resolve(&self, name: &str) -> Result<Image> {
        let wanted = normalize(name);
        let images = self.list()?;
        let by_id = |img: &Image| {
            let hex = img.id.trim_start_matches("sha256:");
            img.id == name || (name.len() >= 12 && hex.starts_with(name.trim_start_matches("sha256:")))
        };
        images
            .iter()
            .find(|img| img.refs.contains(&wanted))
            .or_else(|| images.iter().find(|img| by_id(img)))
            .cloned()
            .ok_or_else(|| ImageError::NotFound(name.to_string()))
    }

    /// Removes `name`: a reference removes just that reference, an ID every
    /// reference to the image. Blobs and layers nothing points at any more
    /// are deleted unless an image in `in_use` (IDs) still needs them.
    pub fn remove(&self, name: &str, in_use: &BTreeSet<String>) -> Result<()> {
        let image = self.resolve(name)?;
        let by_ref = image.refs.contains(&normalize(name));
        if in_use.contains(&image.id) && (!by_ref || image.refs.len() == 1) {
            return Err(ImageError::InUse { image: name.to_string() });
        }
        {
            let _lock = self.lock()?;
            let mut refs = self.read_refs()?;
            let wanted = normalize(name);
            refs.refs.retain(|r, m| if by_ref { *r != wanted } else { *m != image.manifest_digest });
            self.write_refs(&mut refs)?;
        }
        self.collect_garbage()
    }

    /// Removes every image no container uses (pinned ones too unless
    /// `keep_pinned`); returns the removed IDs.
    pub fn prune(&self, in_use: &BTreeSet<String>, keep_pinned: bool) -> Result<Vec<String>> {
        let removed: Vec<String> = {
            let _lock = self.lock()?;
            let images = self.list()?;
            let mut refs = self.read_refs()?;
            let kept = |i: &Image| in_use.contains(&i.id) || (keep_pinned && i.pinned);
            let unused: Vec<&Image> = images.iter().filter(|i| !kept(i)).collect();
            refs.refs.retain(|_, m| !unused.iter().any(|i| i.manifest_digest == *m));
            self.write_refs(&mut refs)?;
            unused.iter().map(|i| i.id.clone()).collect()
        };
        self.collect_garbage()?;
        Ok(removed)
    }

    /// Deletes blobs and unpacked layers no referenced image needs. Layers a
    /// container's root still stacks on stay until that container is gone.
    fn collect_garbage(&self) -> Result<()> {
        let _lock = self.lock()?;
        let images = self.list()?;
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        for img in &images {
            keep_blobs.insert(hex_of(&img.manifest_digest));
            keep_blobs.insert(hex_of(&img.id));
            keep_blobs.extend(img.layers.iter().map(|l| hex_of(l.digest().as_ref())));
            keep_layers.extend(img.config.rootfs().diff_ids().iter().map(|d| hex_of(d)));
        }
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !keep_blobs.contains(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let layers = self.root.join("layers");
        for entry in fs::read_dir(&layers).map_err(io_err(&layers))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let hex = name.split('.').next().unwrap_or_default().to_string();
            if !keep_layers.contains(&hex) && !self.layer_in_use(&hex) {
                let path = entry.path();
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
        Ok(())
    }

    /// A layer directory is in use while some container's overlay names it;
    /// containers record their lower directories in `layers/<hex>.users/`.
    fn layer_in_use(&self, hex: &str) -> bool {
        let users = self.root.join("layers").join(format!("{hex}.users"));
        fs::read_dir(users).map(|mut d| d.next().is_some()).unwrap_or(false)
    }

    /// Unpacks (once) each layer of `image`, returning the layer directories
    /// from the bottom layer up.
    pub fn unpack(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let diff_ids = image.config.rootfs().diff_ids();
        if diff_ids.len() != image.layers.len() {
            return Err(ImageError::Layer {
                digest: image.id.clone(),
                message: format!("{} layers but {} diff_ids", image.layers.len(), diff_ids.len()),
            });
        }
        let mut dirs = Vec::new();
        for (layer, diff_id) in image.layers.iter().zip(diff_ids) {
            let dir = self.root.join("layers").join(self.layer_name(diff_id)?);
            if !dir.with_extension("done").exists() {
                // One unpacker at a time: a second one would find the first's
                // directory without its marker and take it for a crash's leftovers.
                let _lock = self.lock()?;
                let _no_fork_meanwhile = crate::forklock::writing();
                if !dir.with_extension("done").exists() {
                    let blob = self.blob_path(layer.digest().as_ref())?;
                    unpack::unpack_layer(&blob, &dir, &self.root.join("tmp"), diff_id)?;
                }
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Marks the layers of a container's root as used by `container_id`.
    pub fn hold_layers(&self, layers: &[PathBuf], container_id: &str) -> Result<()> {
        for l in layers {
            let users = l.with_extension("users");
            fs::create_dir_all(&users).map_err(io_err(&users))?;
            let marker = users.join(container_id);
            fs::write(&marker, b"").map_err(io_err(&marker))?;
        }
        Ok(())
    }

    pub fn release_layers(&self, container_id: &str) {
        let layers = self.root.join("layers");
        if let Ok(entries) = fs::read_dir(&layers) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".users") {
                    let _ = fs::remove_file(e.path().join(container_id));
                }
            }
        }
    }

    /// Bytes and inodes under the store, for ImageFsInfo.
    pub fn usage(&self) -> (u64, u64) {
        crate::fsutil::disk_usage(&self.root)
    }

    pub fn import(&self, archive: &Path) -> Result<Vec<String>> {
        import::import_archive(self, archive)
    }
}

/// A named temporary file in `dir`, removed by the caller on failure.
fn tempfile_in(dir: &Path) -> Result<(File, PathBuf)> {
    let path = dir.join(format!("blob-{}-{}", std::process::id(), crate::fsutil::unique()));
    let file = File::options().create_new(true).write(true).open(&path).map_err(io_err(&path))?;
    Ok((file, path))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ImageStore {
    /// The directory name of the layer `diff_id` names: its hex, once it
    /// is checked to be a sha256 digest (an image's config says it, and a
    /// name such as `../x` would otherwise leave `layers/`).
    fn layer_name(&self, diff_id: &str) -> Result<String> {
        self.blob_path(diff_id)?;
        Ok(hex_of(diff_id))
    }
}

fn hex_of(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_named_only_by_a_sha256_digest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(tmp.path()).expect("store");
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(store.layer_name(&good).expect("a digest"), "ab".repeat(32));
        // An image's config could name `/` or `..` as a diff_id: `layers/`
        // joined with `/` is the host's root, whose `.done` "marker" exists,
        // so it was taken as unpacked and became the container's lower layer.
        for bad in ["/", "sha256:..", "sha256:../../etc", "../../etc", "sha256:", "sha512:00"] {
            let err = store.layer_name(bad).expect_err(bad);
            assert!(err.to_string().contains("unsupported digest"), "{bad}: {err}");
        }
    }
}
