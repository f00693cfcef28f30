//! The CRI's ImageService verbs on [`Runtime`], over the image store.

use std::collections::BTreeSet;

use k8s_cri::v1 as cri;

use super::{Result, Runtime, RuntimeError, blocking, convert, records};
use crate::images::ImageError;

impl Runtime {
    /// IDs of the images some container (in any state) still uses.
    pub fn images_in_use(&self) -> BTreeSet<String> {
        self.state().containers.values().map(|c| c.image_id.clone()).collect()
    }

    /// Pulls `name` from its registry; returns the image ID.
    pub async fn pull_image(&self, name: &str, creds: Option<crate::images::registry::Credentials>) -> Result<String> {
        let inner = self.inner.clone();
        let name = name.to_string();
        let pulled = blocking(move || {
            let mut puller =
                crate::images::registry::Puller::new(&inner.images, inner.opts.insecure_registries.clone(), creds);
            Ok(puller.pull(&name)?)
        })
        .await;
        crate::metrics::image_pulled(pulled.is_ok());
        pulled
    }

    pub fn list_images(&self) -> Result<Vec<cri::Image>> {
        Ok(self.inner.images.list()?.iter().map(convert::image).collect())
    }

    pub fn image_status(&self, name: &str) -> Result<Option<cri::Image>> {
        match self.inner.images.resolve(name) {
            Ok(img) => Ok(Some(convert::image(&img))),
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let in_use = self.images_in_use();
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking(move || match inner.images.remove(&name, &in_use) {
            Ok(()) | Err(ImageError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// Under disk pressure (the data dir's file system fuller than
    /// `high_percent`), removes every image no container uses and no desired
    /// pod names (`wanted`: image references), as the kubelet's image GC
    /// does; pinned (imported) images stay. Returns the removed image IDs.
    pub async fn collect_images_if_full(&self, high_percent: u8, wanted: &[String]) -> Result<Vec<String>> {
        let root = self.inner.paths.root.clone();
        let used = blocking(move || {
            let st = nix::sys::statvfs::statvfs(&root).map_err(RuntimeError::sys(&root))?;
            let total = st.blocks() as f64;
            Ok(if total > 0.0 { 100.0 * (total - st.blocks_available() as f64) / total } else { 0.0 })
        })
        .await?;
        if used < f64::from(high_percent) {
            return Ok(Vec::new());
        }
        let mut in_use = self.images_in_use();
        // A pod about to start has no container yet: its image is kept too.
        in_use.extend(wanted.iter().filter_map(|r| self.inner.images.resolve(r).ok()).map(|img| img.id));
        let inner = self.inner.clone();
        let removed = blocking(move || Ok(inner.images.prune(&in_use, true)?)).await?;
        tracing::warn!(
            used_percent = format!("{used:.0}"),
            removed = removed.len(),
            "disk pressure: removed unused images"
        );
        Ok(removed)
    }

    pub fn image_fs_info(&self) -> cri::ImageFsInfoResponse {
        let (bytes, inodes) = self.inner.images.usage();
        let usage = cri::FilesystemUsage {
            timestamp: records::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.inner.images.root().display().to_string() }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        cri::ImageFsInfoResponse { image_filesystems: vec![usage], container_filesystems: vec![] }
    }
}
