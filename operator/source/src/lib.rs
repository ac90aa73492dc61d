//! Git sources for the build context: [`fetch`] checks one revision of a repository out into
//! a directory, the way a Docker build context from git looks (the files of that commit, no
//! `.git`). A fetch pod in the operator image runs it (`stagecoach fetch`); it is blocking,
//! holds the only copy of the git credentials, and never prompts or reads the user's git
//! configuration, so it behaves the same on a laptop as in a pod without a terminal.
//!
//! Fetches are shallow (depth 1) over protocol v2, for branches, tags, a commit id and the
//! default branch alike; a commit id falls back to a full fetch only when an old server
//! refuses to send a commit it does not advertise (the `git` module says how, and what v0/v1
//! servers do to depth). Basic-auth credentials are only ever sent over https://: gix refuses
//! to send them in clear text, and a server asking for them over http:// is an
//! authentication failure that says so.

mod dest;
mod error;
mod git;

use std::fmt;
use std::path::Path;

pub use error::FetchError;

/// What to fetch.
#[derive(Clone)]
pub struct GitRequest<'a> {
    /// The repository: `https://`, `http://`, `git://` or `file://`.
    pub url: &'a str,
    /// A branch name, a tag name, a full reference name (`refs/…`) or a full 40-hex commit id;
    /// the remote's default branch (its `HEAD`) when `None`.
    pub revision: Option<&'a str>,
    /// Basic authentication for `http://` and `https://` (ignored by the other transports).
    pub credentials: Option<BasicAuth>,
}

impl fmt::Debug for GitRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL may carry a password too.
        f.debug_struct("GitRequest")
            .field("url", &redact_url(self.url))
            .field("revision", &self.revision)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// A user name and password (or token) for HTTP basic authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password or access token; never printed.
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a fetch checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The commit, as 40 lower-case hex digits.
    pub commit: String,
    /// Whether history was cut at the commit (a depth-1 fetch of a commit that has parents).
    pub shallow: bool,
}

/// `url` (or any text with URLs in it) without the passwords of `scheme://user:password@`
/// URLs, for messages and logs.
pub fn redact_url(url: &str) -> String {
    error::redact_userinfo(url)
}

/// Fetches `req` and puts the commit's files at `dest`, without `.git`. An existing `dest` is
/// replaced as a whole (so a retried fetch works); the files are written to a sibling
/// directory first and renamed into place, so `dest` is never half-written.
pub fn fetch(req: &GitRequest<'_>, dest: &Path) -> Result<Fetched, FetchError> {
    let staging = dest::Staging::beside(dest).map_err(|(path, e)| error::io(req, path, e))?;
    let (fetched, _repo) = git::fetch_into(req, staging.git_dir(), staging.tree_dir(), &[])?;
    staging
        .replace(dest)
        .map_err(|(path, e)| error::io(req, path, e))?;
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let auth = BasicAuth {
            username: "ci".to_string(),
            password: "hunter2".to_string(),
        };
        let request = GitRequest {
            url: "https://ci:hunter2@example.invalid/r.git",
            revision: None,
            credentials: Some(auth.clone()),
        };
        for text in [format!("{auth:?}"), format!("{request:?}")] {
            assert!(text.contains("ci"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
