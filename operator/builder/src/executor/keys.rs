//! The instruction cache: `keys/<key>` records (one JSON file per instruction key, written
//! atomically) naming the layer and history entry an instruction produced.
use super::*;

/// What `keys/<key>` holds: the result of one instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// The layer, absent when the step changed no file.
    pub layer: Option<LayerRecord>,
    /// The history entry (its `emptyLayer` agrees with `layer`).
    pub history: HistoryEntry,
    /// True when there is no layer.
    pub empty_layer: bool,
}

/// The key store: `keys/<key>` files under the cache root.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// Opens (creating) `<root>/keys`.
    pub fn open(root: &Path) -> Result<Self, ExecutorError> {
        let dir = CacheLayout::new(root).keys();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        Ok(Self { dir })
    }

    /// The entry for `key`, if any. An unreadable or malformed entry reads as a miss: it is
    /// a cache, and the step is simply run again (and the entry rewritten).
    pub fn get(&self, key: &str) -> Option<CacheEntry> {
        let bytes = fs::read(self.dir.join(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Marks `key` as used now (see [`crate::gc`]).
    pub fn touch(&self, key: &str) {
        crate::gc::touch(&self.dir.join(key));
    }

    /// Writes the entry for `key` atomically and durably, so readers see the old entry, the
    /// new one, or none, never half of one.
    pub fn put(&self, key: &str, entry: &CacheEntry) -> Result<(), ExecutorError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| ExecutorError::Io {
            action: "encode cache entry",
            path: self.dir.join(key),
            source: io::Error::other(e),
        })?;
        let path = self.dir.join(key);
        stagecoach_oci::atomic::write_file(&path, &bytes, 0o644)
            .map_err(io_err("write cache entry", &path))?;
        Ok(())
    }
}
