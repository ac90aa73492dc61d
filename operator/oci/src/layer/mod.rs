//! Image layers: writing a directory tree or a set of changes as a deterministic tar stream,
//! and applying a layer onto a root directory. Both sides speak the OCI whiteout convention:
//! a deleted `dir/name` is an empty file `dir/.wh.name`, and a directory whose lower
//! contents are hidden carries an empty `dir/.wh..wh..opq`.

mod apply;
mod write;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub use apply::{ApplyError, ApplyOptions, ApplyStats, apply_layer, apply_layer_blob};
pub use write::{
    Change, LayerInfo, LayerOptions, LayerSource, LayerWriteError, write_layer, write_layer_to,
};

/// Prefix of a whiteout file's name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of AUFS bookkeeping files, which appliers ignore.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// Turns a path as found in a tar header or a change list into a clean relative path:
/// leading `/` and `.` are dropped (layers conventionally name `./etc` or `etc`), and any
/// `..` is refused, because a layer never needs one and it is the classic escape.
/// Returns `None` for `..`; an empty result stands for the root itself.
fn normalize_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
            Component::Normal(name) => out.push(name),
        }
    }
    Some(out)
}

/// The same from raw tar bytes.
fn normalize_relative_bytes(bytes: &[u8]) -> Option<PathBuf> {
    normalize_relative(Path::new(OsStr::from_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(
            normalize_relative(Path::new("./a//b/./c/")),
            Some(PathBuf::from("a/b/c"))
        );
        assert_eq!(
            normalize_relative(Path::new("/etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(normalize_relative(Path::new("a/../../b")), None);
        assert_eq!(normalize_relative(Path::new("./")), Some(PathBuf::new()));
    }
}
