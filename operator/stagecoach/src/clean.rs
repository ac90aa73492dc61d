//! `stagecoach clean`: what the cleanup pod of a deleted ImageBuild runs. It removes the
//! build's directory (`builds/<uid>/`: the fetched context, stage results and exports) from
//! the cache volume, which only a pod can reach; the layers and cache keys stay, since other
//! builds of the namespace may share them.

use std::path::PathBuf;

/// Arguments of `stagecoach clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// The cache root.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    /// The build whose directory goes (its uid, as the cache layout spells it).
    #[arg(long, value_name = "UID")]
    build: String,
}

/// Why the build's directory could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    /// Removing failed.
    #[error("removing {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Removes `builds/<build>/` under the cache root; a directory that is not there is fine.
pub fn run(args: &CleanArgs) -> Result<(), CleanError> {
    // The layout escapes the id to one path component: it cannot name anything else.
    let layout = stagecoach_protocol::CacheLayout::new(&args.cache);
    let dir = layout.build(&args.build);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {
            tracing::info!("[clean] removed {}", dir.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("[clean] {} was not there", dir.display());
            Ok(())
        }
        Err(source) => Err(CleanError::Remove { path: dir, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_directory_goes_and_the_shared_cache_stays() {
        let cache = tempfile::tempdir().unwrap();
        let layout = stagecoach_protocol::CacheLayout::new(cache.path());
        let stage = layout.build_stage("u-1", 0);
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join("result.json"), "{}").unwrap();
        std::fs::create_dir_all(layout.blobs()).unwrap();
        std::fs::create_dir_all(layout.build("u-2")).unwrap();
        let args = |build: &str| CleanArgs {
            cache: cache.path().to_path_buf(),
            build: build.into(),
        };
        run(&args("u-1")).unwrap();
        assert!(!layout.build("u-1").exists());
        assert!(layout.blobs().exists() && layout.build("u-2").exists());
        // Again: nothing there is not an error.
        run(&args("u-1")).unwrap();
    }
}
