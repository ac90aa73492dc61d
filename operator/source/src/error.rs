//! [`FetchError`]: what a failed fetch tells the user, through the ImageBuild's status. Each
//! variant has a stable [`FetchError::reason`] for scripts and a message that names the URL
//! and the revision, because the reader only has `kubectl get imagebuild -o yaml` to go on.
//! Secrets never reach a message: URLs lose their password, and the request's password is
//! scrubbed from every detail gix reports.

use std::io;
use std::path::PathBuf;

use crate::GitRequest;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server could not be reached: DNS, a refused or timed-out connection.
    #[error("cannot reach {url} (fetching {revision}): {detail}")]
    GitUnreachable {
        /// The repository, without a password.
        url: String,
        /// The revision, as a phrase (`revision "main"`, `the default branch`).
        revision: String,
        /// What went wrong.
        detail: String,
    },
    /// The repository has no such branch, tag or commit.
    #[error("{revision} was not found in {url}: {detail}")]
    GitRevisionNotFound {
        /// The repository, without a password.
        url: String,
        /// The revision, as a phrase.
        revision: String,
        /// What the server said or listed.
        detail: String,
    },
    /// The server wants credentials, or refused the ones given.
    #[error("{url} refused access (fetching {revision}): {detail}")]
    GitAuthFailed {
        /// The repository, without a password.
        url: String,
        /// The revision, as a phrase.
        revision: String,
        /// What went wrong.
        detail: String,
    },
    /// Anything else git-related: an unsupported URL, a protocol error, a missing repository.
    #[error("fetching {revision} of {url} failed: {detail}")]
    GitFailed {
        /// The repository, without a password.
        url: String,
        /// The revision, as a phrase.
        revision: String,
        /// What went wrong.
        detail: String,
    },
    /// Writing the files locally failed.
    #[error("fetching {revision} of {url}: {}: {source}", path.display())]
    IoFailed {
        /// The repository, without a password.
        url: String,
        /// The revision, as a phrase.
        revision: String,
        /// The local path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl FetchError {
    /// A stable name for the kind of failure, for messages and scripts.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::GitUnreachable { .. } => "GitUnreachable",
            FetchError::GitRevisionNotFound { .. } => "GitRevisionNotFound",
            FetchError::GitAuthFailed { .. } => "GitAuthFailed",
            FetchError::GitFailed { .. } => "GitFailed",
            FetchError::IoFailed { .. } => "IoFailed",
        }
    }
}

/// What a gix failure means for the user; decides the [`FetchError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Unreachable,
    RevisionNotFound,
    AuthFailed,
    Failed,
    /// The server refused an object id we asked for ("not our ref"): a missing commit, or a
    /// server that only hands out advertised refs. The caller tells which.
    WantRefused,
}

/// A git failure of `req`, its detail cleaned of secrets.
pub(crate) fn git(req: &GitRequest<'_>, kind: Kind, detail: String) -> FetchError {
    let url = redact_userinfo(req.url);
    let revision = revision_phrase(req.revision);
    let mut detail = scrub(req, &detail);
    match kind {
        Kind::Unreachable => FetchError::GitUnreachable {
            url,
            revision,
            detail,
        },
        Kind::RevisionNotFound | Kind::WantRefused => {
            if req.revision.is_some_and(looks_abbreviated) {
                detail.push_str(" (a commit must be given as its full 40-hex id)");
            }
            FetchError::GitRevisionNotFound {
                url,
                revision,
                detail,
            }
        }
        Kind::AuthFailed => FetchError::GitAuthFailed {
            url,
            revision,
            // gix words this as a credential helper's failure; there are no helpers here.
            detail: if req.credentials.is_none() && detail.contains("No credentials were returned")
            {
                "the server asks for credentials, and none were given".to_string()
            } else {
                detail
            },
        },
        Kind::Failed => FetchError::GitFailed {
            url,
            revision,
            detail,
        },
    }
}

/// A local I/O failure of `req` at `path`.
pub(crate) fn io(req: &GitRequest<'_>, path: PathBuf, source: io::Error) -> FetchError {
    FetchError::IoFailed {
        url: redact_userinfo(req.url),
        revision: revision_phrase(req.revision),
        path,
        source,
    }
}

fn revision_phrase(revision: Option<&str>) -> String {
    match revision.map(str::trim) {
        None | Some("") | Some("HEAD") => "the default branch".to_string(),
        Some(r) => format!("revision {r:?}"),
    }
}

/// A short hex string: probably an abbreviated commit id, which a fetch cannot ask for.
fn looks_abbreviated(revision: &str) -> bool {
    (4..40).contains(&revision.len()) && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Sorts a gix failure into a [`Kind`], from the typed causes where gix has them (I/O error
/// kinds, its authentication classification) and from the server's words where it does not
/// (`not our ref` arrives as text in an ERR packet).
pub(crate) fn classify(error: &gix::Error) -> Kind {
    let mut kind = None;
    for cause in error.iter_errors() {
        if let Some(gix::protocol::transport::client::Error::AuthenticationRefused(_)) =
            cause.downcast_ref()
        {
            return Kind::AuthFailed;
        }
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && let Some(k) = io_kind(io.kind())
        {
            kind.get_or_insert(k);
        }
        let text = cause.to_string();
        if text.contains("not our ref") {
            kind.get_or_insert(Kind::WantRefused);
        }
        if UNREACHABLE_TEXTS.iter().any(|t| text.contains(t)) {
            kind.get_or_insert(Kind::Unreachable);
        }
    }
    if error.is_unauthenticated() {
        return Kind::AuthFailed;
    }
    kind.unwrap_or(Kind::Failed)
}

/// How resolvers and HTTP clients word the failures that have no I/O error kind of their own.
const UNREACHABLE_TEXTS: &[&str] = &[
    "failed to lookup address",
    "Name or service not known",
    "No address associated with hostname",
    "Temporary failure in name resolution",
    "dns error",
];

fn io_kind(kind: io::ErrorKind) -> Option<Kind> {
    use io::ErrorKind as E;
    match kind {
        E::ConnectionRefused
        | E::ConnectionReset
        | E::ConnectionAborted
        | E::TimedOut
        | E::HostUnreachable
        | E::NetworkUnreachable
        | E::NetworkDown
        | E::AddrNotAvailable
        | E::NotConnected => Some(Kind::Unreachable),
        _ => None,
    }
}

/// Whether the server hung up while we were still talking: how a local `git upload-pack`
/// refusing a want looks when it exits before we read its error line.
pub(crate) fn closed_by_server(error: &gix::Error) -> bool {
    error.iter_errors().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
            )
        })
    })
}

/// One line from a gix failure and its causes: each distinct message once, outermost first.
pub(crate) fn describe(error: &gix::Error) -> String {
    for cause in error.iter_errors() {
        if let Some(gix::protocol::transport::client::Error::AuthenticationRefused(reason)) =
            cause.downcast_ref()
        {
            // gix's words ("clear text over http") do not say what to do.
            return if reason.contains("clear text") {
                "the server asks for credentials, and they are only sent over https:// \
                 (this URL is http://)"
                    .to_string()
            } else {
                format!("the credentials cannot be used: {reason}")
            };
        }
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in error.iter_errors() {
        let text = cause.to_string();
        let text = text.trim();
        // Wrappers often repeat their cause's text; keep the more specific one once.
        if text.is_empty() || parts.iter().any(|p| p.contains(text)) {
            continue;
        }
        parts.push(text.to_string());
    }
    if parts.is_empty() {
        return error.to_string();
    }
    parts.join(": ")
}

/// `text` with the request's password and any URL password removed.
fn scrub(req: &GitRequest<'_>, text: &str) -> String {
    let mut text = redact_userinfo(text);
    if let Some(auth) = &req.credentials
        && !auth.password.is_empty()
    {
        text = text.replace(&auth.password, "<redacted>");
    }
    text
}

/// Drops the password of every `scheme://user:password@host` in `text`, keeping the user.
pub(crate) fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":<redacted>");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BasicAuth;

    #[test]
    fn url_passwords_are_redacted_wherever_they_appear() {
        assert_eq!(
            redact_userinfo("https://ci:s3cret@git.example/r.git"),
            "https://ci:<redacted>@git.example/r.git"
        );
        assert_eq!(
            redact_userinfo("x \"http://a:b@h:80/p\" and git://h/p and https://tok@h/"),
            "x \"http://a:<redacted>@h:80/p\" and git://h/p and https://tok@h/"
        );
        assert_eq!(redact_userinfo("no url here"), "no url here");
    }

    #[test]
    fn messages_name_url_and_revision_but_not_the_password() {
        let req = GitRequest {
            url: "https://ci:urlpass@git.example/r.git",
            revision: Some("main"),
            credentials: Some(BasicAuth {
                username: "ci".to_string(),
                password: "hunter2".to_string(),
            }),
        };
        let e = git(
            &req,
            Kind::AuthFailed,
            "server said hunter2 is wrong for https://ci:urlpass@git.example/r.git".to_string(),
        );
        let text = e.to_string();
        assert_eq!(e.reason(), "GitAuthFailed");
        assert!(text.contains("git.example/r.git"), "{text}");
        assert!(text.contains("revision \"main\""), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("urlpass"),
            "{text}"
        );
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[test]
    fn credentials_refused_over_plain_http_say_why() {
        let refused = gix::Error::from_error(
            gix::protocol::transport::client::Error::AuthenticationRefused(
                "Will not send credentials in clear text over http",
            ),
        );
        assert_eq!(classify(&refused), Kind::AuthFailed);
        assert!(describe(&refused).contains("only sent over https://"));
    }

    #[test]
    fn an_abbreviated_commit_gets_a_hint() {
        let req = GitRequest {
            url: "git://h/r",
            revision: Some("abc1234"),
            credentials: None,
        };
        let text = git(&req, Kind::RevisionNotFound, "no such ref".to_string()).to_string();
        assert!(text.contains("full 40-hex id"), "{text}");
    }
}
