//! Instruction cache keys: a sha256 over the parent's key, the instruction's text after
//! expansion, the content digests of what it reads (COPY/ADD sources, mounted stages) and the
//! build ARGs it used. Keys chain, so a change invalidates the instruction that reads it and
//! everything after, never anything before. Every field is tagged and length-prefixed so no
//! two different inputs can hash alike by running together; file contents are streamed, never
//! held in memory. Modification times are deliberately left out: BuildKit's keys are
//! content-based, and a fresh checkout must hit the cache of an earlier one.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::{BuildContext, ContextError, FileKind};
use crate::copy::{CopyPlan, OpSource};
use crate::dockerignore::PatternMatcher;

/// Bumped whenever the key layout changes, so old cache entries stop matching.
const KEY_VERSION: &str = "stagecoach-cache-key-v1";

/// Errors computing digests.
#[derive(Debug, thiserror::Error)]
pub enum CacheKeyError {
    /// A source file could not be read.
    #[error("hashing {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A source could not be resolved in its context.
    #[error(transparent)]
    Context(#[from] ContextError),
}

/// Everything an instruction's cache key depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheKey {
    /// The previous instruction's key, or the base image's digest for the first one.
    pub parent: String,
    /// The instruction after expansion (its history text is a good choice).
    pub text: String,
    /// Content digests of what it reads, by a name (`copy`, `stage:build`, `mount:/src`).
    pub inputs: BTreeMap<String, String>,
    /// The build ARGs it used, with their values.
    pub args: BTreeMap<String, String>,
}

/// The running hash with tagged, length-prefixed fields.
struct Framer(Sha256);

impl Framer {
    fn new(domain: &str) -> Self {
        let mut f = Self(Sha256::new());
        f.field(b'V', KEY_VERSION.as_bytes());
        f.field(b'D', domain.as_bytes());
        f
    }

    fn field(&mut self, tag: u8, bytes: &[u8]) {
        self.0.update([tag]);
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

impl CacheKey {
    /// A key for an instruction following `parent`.
    pub fn new(parent: &str, text: &str) -> Self {
        Self {
            parent: parent.to_string(),
            text: text.to_string(),
            ..Self::default()
        }
    }

    /// Adds a content digest the instruction reads.
    pub fn input(mut self, name: &str, digest: &str) -> Self {
        self.inputs.insert(name.to_string(), digest.to_string());
        self
    }

    /// Adds the build ARGs the instruction used.
    pub fn args<'a>(mut self, used: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        for (k, v) in used {
            self.args.insert(k.to_string(), v.to_string());
        }
        self
    }

    /// The key: 64 lowercase hex digits.
    pub fn digest(&self) -> String {
        let mut f = Framer::new("instruction");
        f.field(b'P', self.parent.as_bytes());
        f.field(b'T', self.text.as_bytes());
        for (name, digest) in &self.inputs {
            f.field(b'I', name.as_bytes());
            f.field(b'i', digest.as_bytes());
        }
        for (name, value) in &self.args {
            f.field(b'A', name.as_bytes());
            f.field(b'a', value.as_bytes());
        }
        f.finish()
    }
}

/// sha256 of a file's content, streamed.
fn file_digest(path: &Path) -> Result<String, CacheKeyError> {
    let err = |source| CacheKeyError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn kind_tag(kind: FileKind) -> &'static [u8] {
    match kind {
        FileKind::File => b"file",
        FileKind::Dir => b"dir",
        FileKind::Symlink => b"symlink",
        FileKind::Fifo => b"fifo",
        FileKind::Other => b"other",
    }
}

/// The content digest of what a COPY/ADD plan writes: for each operation in destination
/// order, its path, type, mode, owner and content (file bytes, heredoc text, link target, or
/// an archive's bytes). A downloaded `ADD <url>` file is hashed like any other file, so its
/// step's key changes with what the URL serves.
pub fn digest_copy_plan(plan: &CopyPlan) -> Result<String, CacheKeyError> {
    let mut ops: Vec<_> = plan.ops.iter().collect();
    ops.sort_by(|a, b| a.dest.cmp(&b.dest));
    let mut f = Framer::new("copy");
    for op in ops {
        f.field(b'p', op.dest.as_bytes());
        f.field(b'k', kind_tag(op.kind));
        f.field(b'm', &op.mode.to_be_bytes());
        f.field(b'u', &op.owner.uid.to_be_bytes());
        f.field(b'g', &op.owner.gid.to_be_bytes());
        match &op.source {
            // A fifo's kind tag, mode and owner above are all it has.
            OpSource::None | OpSource::Fifo => {}
            OpSource::File(path) => f.field(b'c', file_digest(path)?.as_bytes()),
            OpSource::Content(bytes) => f.field(b'c', hex(&Sha256::digest(bytes)).as_bytes()),
            OpSource::Link(target) => f.field(b'l', target.as_bytes()),
            OpSource::HardLink(first) => f.field(b'h', first.as_bytes()),
            // The archive's bytes decide everything it extracts (names, modes, owners unless
            // `--chown`, which the op's owner above already covers).
            OpSource::Archive { path, keep_owners } => {
                f.field(b'x', file_digest(path)?.as_bytes());
                f.field(b'o', &[u8::from(*keep_owners)]);
            }
        }
    }
    Ok(f.finish())
}

/// The content digest of a source in a context (a file, or a directory and everything
/// under it, ignore rules applied): paths relative to the source, types, modes, contents and
/// link targets, in sorted order. For `RUN --mount=type=bind` and similar readers.
pub fn digest_source(context: &BuildContext, source: &str) -> Result<String, CacheKeyError> {
    let mut f = Framer::new("source");
    for s in context.resolve(source, false)? {
        f.field(b'S', s.rel.as_bytes());
        f.field(b'k', kind_tag(s.kind));
        if s.kind == FileKind::File {
            f.field(b'c', file_digest(&s.path)?.as_bytes());
            continue;
        }
        for e in context.walk(&s, &PatternMatcher::default())? {
            f.field(b'p', e.rel.as_bytes());
            f.field(b'k', kind_tag(e.kind));
            f.field(b'm', &e.mode.to_be_bytes());
            match e.kind {
                FileKind::File => f.field(b'c', file_digest(&e.path)?.as_bytes()),
                FileKind::Symlink => {
                    let target =
                        std::fs::read_link(&e.path).map_err(|source| CacheKeyError::Read {
                            path: e.path.display().to_string(),
                            source,
                        })?;
                    f.field(b'l', target.as_os_str().as_encoded_bytes());
                }
                FileKind::Dir | FileKind::Fifo | FileKind::Other => {}
            }
        }
    }
    Ok(f.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinguish_fields() {
        let k = CacheKey::new("sha256:base", "RUN make # buildkit");
        assert_eq!(k.digest(), k.clone().digest());
        assert_eq!(k.digest().len(), 64);
        assert_ne!(
            CacheKey::new("ab", "c").digest(),
            CacheKey::new("a", "bc").digest(),
            "fields cannot run into each other"
        );
        let a = k
            .clone()
            .input("stage:build", "sha256:1")
            .input("copy", "x");
        let b = k
            .clone()
            .input("copy", "x")
            .input("stage:build", "sha256:1");
        assert_eq!(a.digest(), b.digest(), "inputs are unordered");
        assert_ne!(
            a.digest(),
            k.clone()
                .input("stage:build", "sha256:2")
                .input("copy", "x")
                .digest()
        );
        assert_ne!(
            k.clone().args([("V", "1")]).digest(),
            k.clone().args([("V", "2")]).digest()
        );
    }
}
