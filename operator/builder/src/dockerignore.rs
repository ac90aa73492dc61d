//! `.dockerignore` files: where the builder finds them (`<Dockerfile>.dockerignore` first,
//! read inside the context) and reading them; the text's rules and the matcher are the
//! Dockerfile crate's ([`stagecoach_dockerfile::dockerignore`]).

use std::path::Path;

pub use stagecoach_dockerfile::dockerignore::{MatcherError, PatternMatcher, parse};

/// Errors reading or compiling ignore patterns.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// The file exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The ignore file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The patterns do not compile.
    #[error(transparent)]
    Matcher(#[from] MatcherError),
}

/// Reads `<dir>/.dockerignore`; a missing file means no patterns.
pub fn read(dir: &Path) -> Result<Vec<String>, IgnoreError> {
    read_for(dir, None)
}

/// The ignore patterns for a build: `<Dockerfile>.dockerignore` next to the Dockerfile when
/// it exists (BuildKit prefers it, so one context can serve several Dockerfiles), else the
/// context's `.dockerignore`, read inside the context so a symlink cannot pull in a file from
/// elsewhere. A missing file means no patterns.
pub fn read_for(context: &Path, dockerfile: Option<&Path>) -> Result<Vec<String>, IgnoreError> {
    if let Some(dockerfile) = dockerfile {
        let mut name = dockerfile.as_os_str().to_os_string();
        name.push(".dockerignore");
        let specific = std::path::PathBuf::from(name);
        if let Some(text) = read_text(&specific)? {
            return Ok(parse(&text));
        }
    }
    let path = crate::rootpath::resolve(context, ".dockerignore", true)
        .map(|r| r.path)
        .unwrap_or_else(|_| context.join(".dockerignore"));
    Ok(read_text(&path)?.map(|t| parse(&t)).unwrap_or_default())
}

fn read_text(path: &Path) -> Result<Option<String>, IgnoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IgnoreError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "a\n").unwrap();
        std::fs::create_dir(dir.path().join("build")).unwrap();
        let dockerfile = dir.path().join("build/Dockerfile.prod");
        std::fs::write(dir.path().join("build/Dockerfile.prod.dockerignore"), "b\n").unwrap();
        assert_eq!(read_for(dir.path(), Some(&dockerfile)).unwrap(), ["b"]);
        let other = dir.path().join("build/Dockerfile");
        assert_eq!(read_for(dir.path(), Some(&other)).unwrap(), ["a"]);
        assert!(read(&dir.path().join("build")).unwrap().is_empty());
        // A .dockerignore that is a link out of the context is read inside it.
        let inner = dir.path().join("ctx");
        std::fs::create_dir(&inner).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join(".dockerignore"),
            inner.join(".dockerignore"),
        )
        .unwrap();
        assert!(read(&inner).unwrap().is_empty());
    }
}
