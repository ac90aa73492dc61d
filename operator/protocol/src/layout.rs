//! The cache volume's layout, in one place. Every path under a cache root is made here, so
//! the executor, `stagecoach build`, `stagecoach stage` and the controller's garbage
//! collection agree on it:
//!
//! ```text
//! blobs/sha256/<hex>        content store: layers, configs, manifests
//! keys/<key>                instruction cache: one JSON record per instruction key
//! mounts/<id>, <id>.lock    RUN --mount=type=cache directories and their locks
//! roots/<digest>            unpacked base images (local builds)
//! roots/chains/<chain id>   cache-hit layers as overlay lower directories (local builds)
//! builds/<build>/context    a build's fetched source (builder pods)
//! builds/<build>/stages/<i> a stage's full result and exported files (builder pods)
//! exports/<inputs>/rootfs   a stage's exported files, shared by builds whose stage has
//!                           the same inputs; `done` beside it once complete
//! tmp/                      scratch for one step (downloads, read-write bind copies)
//! work/build-*              a local build's stage roots and runc state, locked while used
//! ```

use std::path::{Path, PathBuf};

/// A cache root and the paths below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLayout {
    root: PathBuf,
}

impl CacheLayout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CacheLayout { root: root.into() }
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content store's blob directory (`blobs/`).
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The instruction cache (`keys/`).
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// The directory of cache mounts (`mounts/`).
    pub fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// The directory of the cache mount `id`, escaped to one path component.
    pub fn mount(&self, id: &str) -> PathBuf {
        self.mounts().join(escape_id(id))
    }

    /// The lock file of the cache mount `id` (`sharing=locked` and `private`).
    pub fn mount_lock(&self, id: &str) -> PathBuf {
        self.mounts().join(format!("{}.lock", escape_id(id)))
    }

    /// Unpacked images and chain directories (`roots/`).
    pub fn roots(&self) -> PathBuf {
        self.root.join("roots")
    }

    /// Scratch space for one step (`tmp/`).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Local builds' work directories (`work/`).
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// Stage exports shared across builds (`exports/`).
    pub fn exports(&self) -> PathBuf {
        self.root.join("exports")
    }

    /// The shared export of a stage whose inputs digest is `inputs` (`exports/<hex>`, the
    /// `sha256:` prefix dropped): `rootfs/` and, once that is complete, `done`.
    pub fn export(&self, inputs: &str) -> PathBuf {
        self.exports()
            .join(escape_id(inputs.strip_prefix("sha256:").unwrap_or(inputs)))
    }

    /// Everything of one in-cluster build (`builds/<build>`); `build` is one path component
    /// (the ImageBuild's uid), escaped like a cache id.
    pub fn build(&self, build: &str) -> PathBuf {
        self.root.join("builds").join(escape_id(build))
    }

    /// A build's fetched source.
    pub fn build_context(&self, build: &str) -> PathBuf {
        self.build(build).join("context")
    }

    /// A stage's directory in a build: its full result (`result-g<generation>.json` in the
    /// controller's jobs) and exported files.
    pub fn build_stage(&self, build: &str, stage: usize) -> PathBuf {
        self.build(build).join("stages").join(stage.to_string())
    }
}

/// Escapes an id to one safe path component: `/` and other bytes outside `[A-Za-z0-9._-]`
/// become `%XX`, and `.`/`..` cannot come out.
pub fn escape_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && !out.is_empty()) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_ids_are_one_component() {
        assert_eq!(escape_id("/root/.cache"), "%2Froot%2F.cache");
        assert_eq!(escape_id(".x"), "%2Ex");
        assert_eq!(escape_id(".."), "%2E.");
        assert_eq!(escape_id("go-build"), "go-build");
        assert_eq!(escape_id(""), "%00");
    }

    #[test]
    fn paths_stay_under_the_root() {
        let l = CacheLayout::new("/c");
        assert_eq!(l.mount("/go/pkg"), PathBuf::from("/c/mounts/%2Fgo%2Fpkg"));
        assert_eq!(l.mount_lock("x"), PathBuf::from("/c/mounts/x.lock"));
        assert_eq!(
            l.build_context("../up"),
            PathBuf::from("/c/builds/%2E.%2Fup/context")
        );
        assert_eq!(l.build_stage("u", 3), PathBuf::from("/c/builds/u/stages/3"));
    }
}
