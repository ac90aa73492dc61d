//! Garbage collection of a cache volume (`stagecoach gc`, run by the controller in a pod per
//! cache claim). What goes, in this order:
//!
//! 1. `builds/<uid>/` of every build not in [`Policy::keep_builds`] (the running ones);
//! 2. `tmp/` leftovers;
//! 3. instruction keys unused for longer than [`Policy::max_age`] (a key's mtime is its last
//!    use: the executor touches it on a hit);
//! 4. cache-mount directories unused as long (the executor touches one each time a RUN
//!    mounts it), unless a RUN holds its lock, and shared stage exports (`exports/<inputs>/`)
//!    unused as long (a stage pod that reads or would write one touches its `done` file);
//! 5. blobs that no remaining key and no running build's stage result names, once older
//!    than the age limit;
//! 6. then, while the cache is over [`Policy::max_bytes`], the least recently used of the
//!    keys, mounts, exports and unreferenced blobs.
//!
//! What cannot be removed (a directory a build left unwritable, say) stays and is counted
//! in the report; the collection goes on with the rest.
//!
//! Nothing used at or after [`Policy::in_use_since`] (the start of the oldest running build)
//! is ever removed, whichever limit it is over: a running build touched or wrote everything
//! it uses after it started. A key whose blob went is a cache miss, never an error
//! (`entry_usable` in the executor), so collection never breaks a later build.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use stagecoach_protocol::StageResult;
use stagecoach_protocol::layout::{CacheLayout, escape_id};

use crate::executor::CacheEntry;

/// What may be removed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The time the ages are measured from.
    pub now: SystemTime,
    /// Anything used at or after this is in use by a running build: never removed.
    pub in_use_since: SystemTime,
    /// Keys, mounts and unreferenced blobs unused for longer are removed.
    pub max_age: Duration,
    /// After the age pass, the least recently used go until the cache holds at most this.
    pub max_bytes: Option<u64>,
    /// The uids of running builds: their `builds/<uid>/` and every blob their stage results
    /// name stay.
    pub keep_builds: BTreeSet<String>,
}

/// What a collection removed and left, in the pod's termination message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `builds/<uid>/` directories removed.
    pub builds: usize,
    /// Instruction keys removed.
    pub keys: usize,
    /// Blobs removed.
    pub blobs: usize,
    /// Cache-mount directories removed.
    pub mounts: usize,
    /// Shared stage exports removed.
    #[serde(default)]
    pub exports: usize,
    /// Bytes freed (file sizes).
    pub freed_bytes: u64,
    /// Bytes the cache holds afterwards.
    pub bytes: u64,
    /// Bytes that would have to go to meet the size limit but are in use (0 when it is met).
    pub over_limit_bytes: u64,
    /// Files and directories that could not be removed (they stay; collection goes on).
    #[serde(default)]
    pub failed: usize,
    /// The first few of those failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Report {
    /// Records what could not be removed; the collection goes on with the rest.
    fn failed(&mut self, error: GcError) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(error.to_string());
        }
    }
}

/// Why a collection stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Listing or removing failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The system's answer.
        source: io::Error,
    },
}

impl GcError {
    /// The stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GcError::Io { .. } => "IoFailed",
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> GcError {
    let path = path.to_path_buf();
    move |source| GcError::Io {
        action,
        path,
        source,
    }
}

/// One file or directory that may go, with its last use and size.
#[derive(Debug, Clone)]
struct Item {
    path: PathBuf,
    used: SystemTime,
    bytes: u64,
}

/// Collects garbage in the cache under `root` (see the module doc).
pub fn collect(root: &Path, policy: &Policy) -> Result<Report, GcError> {
    let layout = CacheLayout::new(root);
    let mut report = Report::default();
    // Older than this and not in use: expired.
    let expiry = policy
        .now
        .checked_sub(policy.max_age)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .min(policy.in_use_since);
    let idle = |t: SystemTime| t < policy.in_use_since;

    // 1. Builds, and what running ones name.
    let keep: BTreeSet<String> = policy.keep_builds.iter().map(|b| escape_id(b)).collect();
    let mut pinned = BTreeSet::new();
    let builds_dir = root.join("builds");
    for entry in list(&builds_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            pinned.extend(result_blobs(&entry.path()));
            continue;
        }
        // Made after the list of running builds was taken: a build that just started.
        if !idle(modified(&entry.path())) {
            continue;
        }
        match remove(&entry.path()) {
            Ok(bytes) => {
                report.freed_bytes += bytes;
                report.builds += 1;
            }
            Err(e) => report.failed(e),
        }
    }

    // 2. Scratch left by steps that ended.
    for entry in list(&layout.tmp())? {
        if idle(modified(&entry.path())) {
            match remove(&entry.path()) {
                Ok(bytes) => report.freed_bytes += bytes,
                Err(e) => report.failed(e),
            }
        }
    }

    // 3. Keys by age.
    let mut keys = list_items(&layout.keys())?;
    keys.retain(|k| {
        if k.used < expiry && still_unused(&k.path, policy.in_use_since) {
            match fs::remove_file(&k.path) {
                Ok(()) => {
                    report.keys += 1;
                    report.freed_bytes += k.bytes;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
                Err(e) => report.failed(io_err("remove", &k.path)(e)),
            }
        }
        true
    });

    // 4. Mounts by age.
    let mut mounts = dir_items(&layout.mounts(), modified)?;
    let mut kept_mounts = Vec::new();
    for m in mounts.drain(..) {
        if m.used >= expiry {
            kept_mounts.push(m);
            continue;
        }
        match remove_mount(&m) {
            Ok(true) => {
                report.mounts += 1;
                report.freed_bytes += m.bytes;
            }
            Ok(false) => kept_mounts.push(m),
            Err(e) => {
                report.failed(e);
                kept_mounts.push(m);
            }
        }
    }

    // 4b. Shared exports by age; what a running build reads or writes was touched since it
    // started.
    let mut exports = dir_items(&layout.exports(), export_used)?;
    exports.retain(|x| {
        // Read again: a reader may have touched it since the list was taken.
        if x.used < expiry && idle(export_used(&x.path)) {
            match remove_export(&x.path) {
                Ok(bytes) => {
                    report.exports += 1;
                    report.freed_bytes += bytes;
                    return false;
                }
                Err(e) => report.failed(e),
            }
        }
        true
    });

    // 5. Blobs no key and no running build names, by age.
    let blobs_dir = layout.blobs().join("sha256");
    let mut referenced: BTreeMap<String, usize> = BTreeMap::new();
    let mut key_blob: BTreeMap<PathBuf, String> = BTreeMap::new();
    for k in &keys {
        if let Some(hex) = key_layer(&k.path) {
            *referenced.entry(hex.clone()).or_insert(0) += 1;
            key_blob.insert(k.path.clone(), hex);
        }
    }
    let mut blobs: BTreeMap<String, Item> = list_items(&blobs_dir)?
        .into_iter()
        .filter_map(|b| Some((b.path.file_name()?.to_str()?.to_string(), b)))
        .collect();
    let unreferenced = |hex: &str, referenced: &BTreeMap<String, usize>| {
        !pinned.contains(hex) && referenced.get(hex).copied().unwrap_or(0) == 0
    };
    let expired: Vec<String> = blobs
        .iter()
        .filter(|(hex, b)| b.used < expiry && unreferenced(hex, &referenced))
        .map(|(hex, _)| hex.clone())
        .collect();
    for hex in expired {
        remove_blob(&mut blobs, &hex, &mut report);
    }

    // 6. The size limit: least recently used first, never what is in use.
    let mut total = blobs.values().map(|b| b.bytes).sum::<u64>()
        + keys.iter().map(|k| k.bytes).sum::<u64>()
        + kept_mounts.iter().map(|m| m.bytes).sum::<u64>()
        + exports.iter().map(|x| x.bytes).sum::<u64>()
        + du(&builds_dir)
        + du(&layout.tmp());
    if let Some(limit) = policy.max_bytes
        && total > limit
    {
        enum Kind {
            Blob(String),
            Key(usize),
            Mount(usize),
            Export(usize),
        }
        let mut candidates: Vec<(SystemTime, Kind)> = Vec::new();
        for (hex, b) in &blobs {
            candidates.push((b.used, Kind::Blob(hex.clone())));
        }
        for (i, k) in keys.iter().enumerate() {
            candidates.push((k.used, Kind::Key(i)));
        }
        for (i, m) in kept_mounts.iter().enumerate() {
            candidates.push((m.used, Kind::Mount(i)));
        }
        for (i, x) in exports.iter().enumerate() {
            candidates.push((x.used, Kind::Export(i)));
        }
        candidates.retain(|(used, _)| idle(*used));
        candidates.sort_by_key(|(used, _)| *used);
        for (_, kind) in candidates {
            if total <= limit {
                break;
            }
            match kind {
                // A blob a key names goes with its last key.
                Kind::Blob(hex) if unreferenced(&hex, &referenced) => {
                    total = total.saturating_sub(remove_blob(&mut blobs, &hex, &mut report));
                }
                Kind::Blob(_) => {}
                Kind::Key(i) => {
                    let k = &keys[i];
                    if !still_unused(&k.path, policy.in_use_since) {
                        continue;
                    }
                    if let Err(e) = remove_file(&k.path) {
                        report.failed(e);
                        continue;
                    }
                    report.keys += 1;
                    report.freed_bytes += k.bytes;
                    total = total.saturating_sub(k.bytes);
                    if let Some(hex) = key_blob.get(&k.path) {
                        let left = referenced.get_mut(hex).map_or(0, |n| {
                            *n = n.saturating_sub(1);
                            *n
                        });
                        if left == 0 && !pinned.contains(hex) {
                            total = total.saturating_sub(remove_blob(&mut blobs, hex, &mut report));
                        }
                    }
                }
                Kind::Mount(i) => {
                    let m = &kept_mounts[i];
                    match remove_mount(m) {
                        Ok(true) => {
                            report.mounts += 1;
                            report.freed_bytes += m.bytes;
                            total = total.saturating_sub(m.bytes);
                        }
                        Ok(false) => {}
                        Err(e) => report.failed(e),
                    }
                }
                Kind::Export(i) => {
                    let x = &exports[i];
                    // Touched since the list was taken: a pod reads it now.
                    if !idle(export_used(&x.path)) {
                        continue;
                    }
                    match remove_export(&x.path) {
                        Ok(bytes) => {
                            report.exports += 1;
                            report.freed_bytes += bytes;
                            total = total.saturating_sub(x.bytes);
                        }
                        Err(e) => report.failed(e),
                    }
                }
            }
        }
        report.over_limit_bytes = total.saturating_sub(limit);
    }
    report.bytes = total;
    Ok(report)
}

/// Removes a blob that is no longer wanted and counts it; the bytes freed.
fn remove_blob(blobs: &mut BTreeMap<String, Item>, hex: &str, report: &mut Report) -> u64 {
    let Some(b) = blobs.remove(hex) else {
        return 0;
    };
    match remove_file(&b.path) {
        Ok(()) => {
            report.blobs += 1;
            report.freed_bytes += b.bytes;
            b.bytes
        }
        Err(e) => {
            report.failed(e);
            0
        }
    }
}

/// Marks a key or a cache-mount directory as used now (its mtime), for collection's
/// least-recently-used order. Best effort: a cache that cannot be touched still works.
pub fn touch(path: &Path) {
    if let Ok(f) = fs::File::open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// The entries of a directory; none when it does not exist.
fn list(dir: &Path) -> Result<Vec<fs::DirEntry>, GcError> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err("list", dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("list", dir)(e)),
    }
}

/// The regular files of a directory with their mtimes and sizes.
fn list_items(dir: &Path) -> Result<Vec<Item>, GcError> {
    Ok(list(dir)?
        .into_iter()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| Item {
                path: e.path(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                bytes: meta.len(),
            })
        })
        .collect())
}

/// The directories under `dir`, each last used when `used` says: cache mounts (their `.lock`
/// files go with them) and shared exports.
fn dir_items(dir: &Path, used: fn(&Path) -> SystemTime) -> Result<Vec<Item>, GcError> {
    Ok(list(dir)?
        .into_iter()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| Item {
            used: used(&e.path()),
            bytes: du(&e.path()),
            path: e.path(),
        })
        .collect())
}

/// Removes a shared export, its `done` file first: a removal cut short must not leave a
/// partial `rootfs` that says it is complete.
fn remove_export(path: &Path) -> Result<u64, GcError> {
    remove_file(&path.join("done"))?;
    remove(path)
}

/// A shared export's last use: its `done` file's time (a reader touches it), else the
/// directory's (a writer's staging directory is made in it).
fn export_used(path: &Path) -> SystemTime {
    modified(path).max(modified(&path.join("done")))
}

/// Removes a cache mount unless a RUN holds its lock; whether it went.
fn remove_mount(m: &Item) -> Result<bool, GcError> {
    let lock_path = m.path.with_file_name(format!(
        "{}.lock",
        m.path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    // Held while removing, so that a RUN waiting for it finds a fresh directory after.
    let lock = match fs::File::open(&lock_path) {
        Ok(f) => {
            if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
            {
                return Ok(false);
            }
            Some(f)
        }
        Err(_) => None,
    };
    remove(&m.path)?;
    if lock.is_some() {
        let _ = fs::remove_file(&lock_path);
    }
    Ok(true)
}

/// Whether a file is still unused since `since`: looked at again just before it goes, as a
/// running build may have touched it since the listing.
fn still_unused(path: &Path, since: SystemTime) -> bool {
    modified(path) < since
}

fn modified(path: &Path) -> SystemTime {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The hex digest of the layer a key names.
fn key_layer(path: &Path) -> Option<String> {
    let entry: CacheEntry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    Some(entry.layer?.digest.hex().to_string())
}

/// The blobs (hex digests) the stage results under a build's directory name.
fn result_blobs(build: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(stages) = fs::read_dir(build.join("stages")) else {
        return out;
    };
    // `result.json`, or one per generation (`result-g<N>.json`) where the controller wrote them.
    let results = stages
        .flatten()
        .filter_map(|stage| fs::read_dir(stage.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| {
            let name = f.file_name();
            let name = name.to_string_lossy();
            name.starts_with("result") && name.ends_with(".json")
        });
    for file in results {
        let Ok(bytes) = fs::read(file.path()) else {
            continue;
        };
        if let Ok(result) = serde_json::from_slice::<StageResult>(&bytes) {
            out.extend(result.layers.iter().map(|l| l.digest.hex().to_string()));
            out.extend(result.config_digest.iter().map(|d| d.hex().to_string()));
        }
    }
    out
}

/// Removes a file or a directory tree; the bytes it held.
fn remove(path: &Path) -> Result<u64, GcError> {
    let bytes = du(path);
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(bytes),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn remove_file(path: &Path) -> Result<(), GcError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// The bytes of the regular files under `path` (not following symlinks).
fn du(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    const HOUR: Duration = Duration::from_secs(3600);

    struct Cache {
        dir: tempfile::TempDir,
        now: SystemTime,
    }

    impl Cache {
        fn new() -> Self {
            Cache {
                dir: tempfile::tempdir().unwrap(),
                now: SystemTime::now(),
            }
        }
        fn root(&self) -> &Path {
            self.dir.path()
        }
        fn at(&self, path: &Path, age: Duration) {
            let f = fs::File::open(path).unwrap();
            f.set_modified(self.now - age).unwrap();
        }
        /// A blob of `len` bytes written `age` ago; its hex digest.
        fn blob(&self, seed: &str, len: usize, age: Duration) -> String {
            let bytes: Vec<u8> = seed.bytes().cycle().take(len).collect();
            let hex: String = sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let dir = self.root().join("blobs/sha256");
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(&hex), &bytes).unwrap();
            self.at(&dir.join(&hex), age);
            hex
        }
        /// A key naming the blob, last used `age` ago.
        fn key(&self, key: &str, blob: &str, age: Duration) -> PathBuf {
            let dir = self.root().join("keys");
            fs::create_dir_all(&dir).unwrap();
            let entry = serde_json::json!({
                "layer": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                          "digest": format!("sha256:{blob}"), "diffId": format!("sha256:{blob}"), "size": 1},
                "history": {"createdBy": key, "emptyLayer": false, "comment": "c"},
                "emptyLayer": false,
            });
            let path = dir.join(key);
            fs::write(&path, entry.to_string()).unwrap();
            assert!(key_layer(&path).is_some(), "the test's key parses");
            self.at(&path, age);
            path
        }
        fn mount(&self, id: &str, bytes: usize, age: Duration) -> PathBuf {
            let dir = self.root().join("mounts").join(id);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("data"), vec![0u8; bytes]).unwrap();
            self.at(&dir, age);
            dir
        }
        fn build(&self, uid: &str, age: Duration, layers: &[&str]) -> PathBuf {
            let dir = self.root().join("builds").join(uid);
            fs::create_dir_all(dir.join("stages/0")).unwrap();
            let result = serde_json::json!({
                "outcome": "Succeeded", "exitCode": 0, "cacheHits": 0, "durationMs": 1,
                "layers": layers.iter().map(|h| serde_json::json!({
                    "mediaType": "m", "digest": format!("sha256:{h}"), "diffId": format!("sha256:{h}"), "size": 1
                })).collect::<Vec<_>>(),
            });
            fs::write(dir.join("stages/0/result-g1.json"), result.to_string()).unwrap();
            self.at(&dir, age);
            dir
        }
        fn blob_exists(&self, hex: &str) -> bool {
            self.root().join("blobs/sha256").join(hex).exists()
        }
        fn policy(&self, in_use_for: Duration) -> Policy {
            Policy {
                now: self.now,
                in_use_since: self.now - in_use_for,
                max_age: 24 * HOUR,
                max_bytes: None,
                keep_builds: BTreeSet::new(),
            }
        }
    }

    #[test]
    fn old_keys_mounts_builds_and_unreferenced_blobs_go_and_what_running_builds_use_stays() {
        let c = Cache::new();
        let old = 48 * HOUR;
        let shared = c.blob("shared", 100, old);
        let stale = c.blob("stale", 100, old);
        let orphan = c.blob("orphan", 100, old);
        let fresh_orphan = c.blob("fresh", 100, HOUR);
        let pinned = c.blob("pinned", 100, old);
        // Two keys name the shared blob; only one is old.
        let k_old = c.key("k-old", &shared, old);
        let k_new = c.key("k-new", &shared, HOUR);
        let k_stale = c.key("k-stale", &stale, old);
        let m_old = c.mount("m-old", 10, old);
        let m_new = c.mount("m-new", 10, HOUR);
        let running = c.build("running", old, &[&pinned]);
        let finished = c.build("finished", old, &[]);
        let started_meanwhile = c.build("new", Duration::from_secs(1), &[]);
        let mut policy = c.policy(2 * Duration::from_secs(60));
        policy.keep_builds.insert("running".into());
        let report = collect(c.root(), &policy).unwrap();

        assert!(!k_old.exists() && !k_stale.exists() && k_new.exists());
        assert!(c.blob_exists(&shared), "a kept key names it");
        assert!(!c.blob_exists(&stale), "its only key went");
        assert!(!c.blob_exists(&orphan));
        assert!(c.blob_exists(&fresh_orphan), "younger than the age limit");
        assert!(c.blob_exists(&pinned), "a running build's result names it");
        assert!(!m_old.exists() && m_new.exists());
        assert!(running.exists() && !finished.exists() && started_meanwhile.exists());
        assert_eq!(
            (report.builds, report.keys, report.blobs, report.mounts),
            (1, 2, 2, 1)
        );
        assert!(report.freed_bytes >= 200 + 10, "{report:?}");
        assert_eq!(report.over_limit_bytes, 0);
    }

    #[test]
    fn nothing_used_since_the_oldest_running_build_started_goes_even_past_the_age_limit() {
        let c = Cache::new();
        let blob = c.blob("b", 100, 48 * HOUR);
        // Touched by a running build's cache hit 10 minutes ago; the age limit is 5 minutes.
        let key = c.key("k", &blob, Duration::from_secs(600));
        let mount = c.mount("m", 10, Duration::from_secs(600));
        let mut policy = c.policy(HOUR);
        policy.max_age = Duration::from_secs(300);
        policy.max_bytes = Some(0);
        let report = collect(c.root(), &policy).unwrap();
        assert!(key.exists() && mount.exists() && c.blob_exists(&blob));
        assert!(report.over_limit_bytes > 0, "{report:?}");
    }

    #[test]
    fn over_the_size_limit_the_least_recently_used_go_first() {
        let c = Cache::new();
        // Each key owns a 1000-byte blob; used 5, 4, 3, 2 hours ago.
        let mut keys = Vec::new();
        let mut blobs = Vec::new();
        for (i, hours) in [5u32, 4, 3, 2].into_iter().enumerate() {
            let b = c.blob(&format!("blob{i}"), 1000, 10 * HOUR);
            keys.push(c.key(&format!("k{i}"), &b, hours * HOUR));
            blobs.push(b);
        }
        let mount = c.mount("m", 1000, Duration::from_secs(3 * 3600 + 1800));
        let mut policy = c.policy(Duration::from_secs(60));
        policy.max_bytes = Some(3000);
        let report = collect(c.root(), &policy).unwrap();
        // 5000 bytes of blobs and mount, and four keys of about 330 bytes: k0 (5 h) and k1
        // (4 h) with their blobs, then the mount (3.5 h) go; k2 and k3 stay.
        assert!(!keys[0].exists() && !keys[1].exists() && !mount.exists());
        assert!(keys[2].exists() && keys[3].exists());
        assert!(!c.blob_exists(&blobs[0]) && !c.blob_exists(&blobs[1]));
        assert!(c.blob_exists(&blobs[2]) && c.blob_exists(&blobs[3]));
        assert!(report.bytes <= 3000, "{report:?}");
        assert_eq!(report.over_limit_bytes, 0);
    }

    #[test]
    fn shared_exports_go_by_their_last_use_and_never_while_a_running_build_reads_them() {
        let c = Cache::new();
        let export = |name: &str, done_age: Option<Duration>, dir_age: Duration| {
            let dir = c.root().join("exports").join(name);
            fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
            fs::write(dir.join("rootfs/bin/tool"), vec![1u8; 500]).unwrap();
            if let Some(age) = done_age {
                fs::write(dir.join("done"), b"").unwrap();
                c.at(&dir.join("done"), age);
            }
            c.at(&dir, dir_age);
            dir
        };
        let old = 48 * HOUR;
        let unused = export("unused", Some(old), old);
        // Written long ago, read by a pod a minute ago: its done file says so.
        let read = export("read", Some(Duration::from_secs(60)), old);
        // A writer's leftover from long ago (no done file).
        let leftover = export("leftover", None, old);
        let report = collect(c.root(), &c.policy(HOUR)).unwrap();
        assert!(!unused.exists() && !leftover.exists());
        assert!(
            read.exists(),
            "in use since the oldest running build started"
        );
        assert_eq!(report.exports, 2);
        assert!(report.freed_bytes >= 1000, "{report:?}");
        // Over the size limit, the least recently used export goes, but not one in use.
        let older = export("older", Some(3 * HOUR), old);
        let newer = export("newer", Some(2 * HOUR), old);
        let mut policy = c.policy(Duration::from_secs(120));
        policy.max_bytes = Some(1200);
        let report = collect(c.root(), &policy).unwrap();
        assert!(
            !older.exists() && newer.exists() && read.exists(),
            "{report:?}"
        );
        assert_eq!(report.exports, 1);
    }

    #[test]
    fn a_locked_mount_stays() {
        let c = Cache::new();
        let mount = c.mount("busy", 10, 48 * HOUR);
        let lock = fs::File::create(c.root().join("mounts/busy.lock")).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        // flock locks are per open file: the collector's own open must not get it.
        let report = collect(c.root(), &c.policy(Duration::from_secs(60))).unwrap();
        assert!(mount.exists());
        assert_eq!(report.mounts, 0);
        drop(lock);
        let report = collect(c.root(), &c.policy(Duration::from_secs(60))).unwrap();
        assert!(!mount.exists());
        assert_eq!(report.mounts, 1);
    }

    #[test]
    fn an_empty_or_missing_cache_is_nothing_to_do() {
        let c = Cache::new();
        let report = collect(&c.root().join("absent"), &c.policy(HOUR)).unwrap();
        assert_eq!(report, Report::default());
    }
}
