//! `ADD <http(s) URL>`: recognising remote sources, downloading one into a staging
//! directory before the step is keyed, and checking `--checksum`.
//!
//! The download happens while the step is planned, not when it runs, because the step's
//! cache key must cover the content (a changed file behind the same URL is a miss, as in
//! BuildKit). What is kept of the response follows BuildKit's HTTP source: the file name is
//! the URL path's last segment (`__unnamed__` when there is none), the mode is 0600 unless
//! `--chmod`, and the mtime is the `Last-Modified` header when there is one (otherwise the
//! time of writing, which layers clamp to SOURCE_DATE_EPOCH like any other).
//!
//! TLS is rustls with the aws-lc-rs provider passed explicitly (the one kube and the registry
//! client use) and the webpki roots, so no second crypto library enters the build. Git
//! sources are recognised only to be refused clearly.

use stagecoach_protocol::reason::StageReason;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// Errors fetching a remote source.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A git repository as a source.
    #[error("ADD {url}: ADD from a git repository is not supported yet")]
    Git {
        /// The source as written.
        url: String,
    },
    /// `--checksum` is not `sha256:<64 hex digits>`.
    #[error(
        "invalid checksum {value:?}: expected sha256:<64 hex digits>, sha384:<96> or sha512:<128>"
    )]
    BadChecksum {
        /// The value as given.
        value: String,
    },
    /// `--checksum` on a source that is not a URL.
    #[error("ADD {source_path}: --checksum can only be used with HTTP(S) sources")]
    ChecksumNeedsUrl {
        /// The source.
        source_path: String,
    },
    /// The request failed (connection, TLS, protocol).
    #[error("downloading {url}: {message}")]
    Request {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an error status.
    #[error("downloading {url}: HTTP status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Writing the download failed.
    #[error("downloading {url} to {path}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The staging file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The content is not what `--checksum` says.
    #[error("ADD {url}: checksum mismatch: expected {expected}, got {got}")]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// The digest `--checksum` gave.
        expected: String,
        /// The digest of what was downloaded.
        got: String,
    },
}

impl FetchError {
    /// A stable reason for status, events and metrics.
    pub fn reason(&self) -> StageReason {
        match self {
            FetchError::Git { .. } => StageReason::Unsupported,
            FetchError::BadChecksum { .. } | FetchError::ChecksumNeedsUrl { .. } => {
                StageReason::InvalidInstruction
            }
            FetchError::Request { .. } | FetchError::Status { .. } | FetchError::Io { .. } => {
                StageReason::DownloadFailed
            }
            FetchError::ChecksumMismatch { .. } => StageReason::ChecksumMismatch,
        }
    }

    /// Whether the Dockerfile (or what it points at) must change: retrying cannot help. A
    /// refused connection or a 5xx may pass on a retry; a 404 or a wrong checksum will not.
    pub fn is_user_error(&self) -> bool {
        match self {
            FetchError::Request { .. } | FetchError::Io { .. } => false,
            FetchError::Status { status, .. } => (400..500).contains(status),
            _ => true,
        }
    }

    /// Whether the input itself is invalid (rather than what the URL served).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            FetchError::Git { .. }
                | FetchError::BadChecksum { .. }
                | FetchError::ChecksumNeedsUrl { .. }
        )
    }
}

/// A downloaded source, ready for a COPY plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The source as written (after expansion): what the plan matches it by.
    pub url: String,
    /// The file in the staging directory.
    pub path: PathBuf,
    /// The name it gets in a directory destination.
    pub name: String,
    /// `Last-Modified`, in seconds since the epoch.
    pub mtime: Option<i64>,
    /// `sha256:<hex>` of the content.
    pub digest: String,
}

/// Whether a source is a git repository (BuildKit's rules: `git://`, `git@`, a
/// `github.com/` path, or an HTTP(S) URL whose path ends in `.git`).
pub fn is_git_url(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    if lower.starts_with("git://") || lower.starts_with("git@") || lower.starts_with("github.com/")
    {
        return true;
    }
    if !is_http_url(source) {
        return false;
    }
    let without_fragment = lower.split('#').next().unwrap_or(&lower);
    let path = without_fragment
        .split('?')
        .next()
        .unwrap_or(without_fragment);
    path.trim_end_matches('/').ends_with(".git")
}

/// Whether a source is an HTTP(S) URL.
pub fn is_http_url(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The name a downloaded file gets in a directory destination: the last segment of the
/// URL's path, percent-decoded, or `__unnamed__` (BuildKit's name when there is none).
pub fn url_file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let last = path.rsplit('/').next().unwrap_or("");
    let decoded = percent_decode(last);
    if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains('/') {
        "__unnamed__".to_string()
    } else {
        decoded
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a `--checksum` value: `sha256:`, `sha384:` or `sha512:` and that many hex digits
/// (lower-cased on return), the algorithms BuildKit takes.
pub fn parse_checksum(value: &str) -> Result<String, FetchError> {
    let bad = || FetchError::BadChecksum {
        value: value.to_string(),
    };
    let (algorithm, hex) = value.split_once(':').ok_or_else(bad)?;
    let digits = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != digits || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(format!("{algorithm}:{}", hex.to_ascii_lowercase()))
}

/// The digest of the kind `--checksum` asked for, computed alongside the SHA-256 every
/// download gets (the cache key uses that one).
enum ExtraHash {
    None,
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl ExtraHash {
    fn for_checksum(checksum: Option<&str>) -> Self {
        match checksum.and_then(|c| c.split_once(':')).map(|(a, _)| a) {
            Some("sha384") => ExtraHash::Sha384(sha2::Sha384::new()),
            Some("sha512") => ExtraHash::Sha512(sha2::Sha512::new()),
            _ => ExtraHash::None,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            ExtraHash::None => {}
            ExtraHash::Sha384(h) => h.update(bytes),
            ExtraHash::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self, sha256: &str) -> String {
        match self {
            ExtraHash::None => sha256.to_string(),
            ExtraHash::Sha384(h) => format!("sha384:{}", hex(&h.finalize())),
            ExtraHash::Sha512(h) => format!("sha512:{}", hex(&h.finalize())),
        }
    }
}

/// Parses an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`, the form servers must
/// send) into seconds since the epoch. Other forms read as absent: the file then gets the
/// time of writing.
pub fn parse_http_date(value: &str) -> Option<i64> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    let days = days_from_civil(year, i64::try_from(month).ok()? + 1, day);
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn agent() -> ureq::Agent {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::WebPki)
        .unversioned_rustls_crypto_provider(provider)
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        // Statuses are reported with the URL by `fetch`, not as ureq errors.
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled body fails rather than holding the stage forever; large files that keep
        // arriving are fine.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("stagecoach/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::new_with_config(config)
}

/// Downloads `url` to `path` (created 0600, must not exist), hashing it on the way, and
/// checks it against `checksum` (from [`parse_checksum`]) when given.
pub fn fetch(url: &str, path: &Path, checksum: Option<&str>) -> Result<Download, FetchError> {
    let request_err = |e: ureq::Error| FetchError::Request {
        url: url.to_string(),
        message: e.to_string(),
    };
    let io_err = |source| FetchError::Io {
        url: url.to_string(),
        path: path.to_owned(),
        source,
    };
    let response = agent().get(url).call().map_err(request_err)?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(FetchError::Status {
            url: url.to_string(),
            status,
        });
    }
    let mtime = response
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let mut body = response.into_body().into_reader();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut extra = ExtraHash::for_checksum(checksum);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(FetchError::Request {
                    url: url.to_string(),
                    message: e.to_string(),
                });
            }
        };
        hasher.update(&buf[..n]);
        extra.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_err)?;
    }
    file.sync_all().map_err(io_err)?;
    let digest = format!("sha256:{}", hex(&hasher.finalize()));
    let checked = extra.finish(&digest);
    if let Some(expected) = checksum
        && expected != checked
    {
        return Err(FetchError::ChecksumMismatch {
            url: url.to_string(),
            expected: expected.to_string(),
            got: checked,
        });
    }
    Ok(Download {
        url: url.to_string(),
        path: path.to_owned(),
        name: url_file_name(url),
        mtime,
        digest,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_url_path() {
        assert_eq!(
            url_file_name("https://h/a/b/tool.tar.gz?x=1#f"),
            "tool.tar.gz"
        );
        assert_eq!(url_file_name("http://h/a%20b"), "a b");
        assert_eq!(url_file_name("http://h"), "__unnamed__");
        assert_eq!(url_file_name("http://h/dir/"), "__unnamed__");
    }

    #[test]
    fn git_urls_are_recognised() {
        assert!(is_git_url("https://github.com/x/y.git"));
        assert!(is_git_url("https://github.com/x/y.git#main"));
        assert!(is_git_url("git@github.com:x/y.git"));
        assert!(is_git_url("git://h/y"));
        assert!(!is_git_url("https://h/y.tar.gz"));
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn checksums() {
        let hex = "A".repeat(64);
        assert_eq!(
            parse_checksum(&format!("sha256:{hex}")).unwrap(),
            format!("sha256:{}", "a".repeat(64))
        );
        assert!(parse_checksum("sha256:abc").is_err());
        assert!(parse_checksum(&format!("md5:{hex}")).is_err());
        let long = "B".repeat(128);
        assert_eq!(
            parse_checksum(&format!("sha512:{long}")).unwrap(),
            format!("sha512:{}", "b".repeat(128))
        );
        assert!(parse_checksum(&format!("sha384:{}", "c".repeat(96))).is_ok());
        assert!(parse_checksum(&format!("sha384:{long}")).is_err());
    }
}
