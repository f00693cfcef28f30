//! Entry points for the fuzz targets (`fuzz/`): what an image from a
//! registry or an archive reaches on the node, without the network or a
//! pull around it. Not API: the fuzz crate is their only caller.

use std::path::Path;

use libcontainer::oci_spec::image::ImageConfiguration;

use super::{ImageStore, Result};

/// Unpacks the layer blob at `blob` into `dest` (`tmp_root` for the work
/// directory), as [`ImageStore::unpack`] does; `diff_id` is what the
/// uncompressed stream must hash to.
pub fn unpack_layer(blob: &Path, dest: &Path, tmp_root: &Path, diff_id: &str) -> Result<()> {
    super::unpack::unpack_layer(blob, dest, tmp_root, diff_id)
}

/// What a pull makes of a registry's manifest response (the pull's own
/// parsing): an index (this node's manifest chosen from it) or a manifest,
/// whose config and layer digests name blob paths in `store`. Returns
/// those paths.
pub fn manifest_response(store: &ImageStore, bytes: &[u8]) -> Result<Vec<std::path::PathBuf>> {
    if let Some(chosen) = super::registry::index_choice(store, "fuzz", bytes)? {
        return Ok(vec![store.blob_path(&chosen)?]);
    }
    let manifest = super::registry::parse_manifest("fuzz", bytes)?;
    let mut paths = vec![store.blob_path(manifest.config().digest().as_ref())?];
    for layer in manifest.layers() {
        paths.push(store.blob_path(layer.digest().as_ref())?);
    }
    Ok(paths)
}

/// An image config's layer directories in `store`, as [`ImageStore::unpack`]
/// names them.
pub fn config_layers(store: &ImageStore, bytes: &[u8]) -> Result<Vec<std::path::PathBuf>> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| super::ImageError::Json { what: "config".into(), source: e })?;
    config.rootfs().diff_ids().iter().map(|d| Ok(store.root().join("layers").join(store.layer_name(d)?))).collect()
}
