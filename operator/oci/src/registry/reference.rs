//! Image references (`[registry/]repository[:tag][@digest]`) parsed and normalised the way
//! Docker and Kubernetes read them, so `busybox`, `docker.io/library/busybox:latest` and
//! `index.docker.io/library/busybox` name the same thing and hash to the same cache keys.
//!
//! Rules: the first path component is a registry when it contains a `.` or a `:` or is
//! `localhost`; otherwise the registry is Docker Hub (`docker.io`), where a one-component
//! repository gets the `library/` prefix. Without a tag or digest the tag is `latest`; with
//! only a digest there is no tag. Repository components are lowercase, as the distribution
//! spec requires; an uppercase first component without `.`/`:` is refused rather than guessed.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// Names Docker Hub goes by in references and credential files.
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];
const DEFAULT_TAG: &str = "latest";
const OFFICIAL_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {problem}")]
pub struct ReferenceError {
    /// The reference as given.
    pub reference: String,
    /// What is wrong with it.
    pub problem: String,
}

fn invalid(reference: &str, problem: impl Into<String>) -> ReferenceError {
    ReferenceError {
        reference: reference.to_owned(),
        problem: problem.into(),
    }
}

/// A parsed, normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises a reference.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(invalid(s, "it is empty"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(s, "it contains whitespace or control characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|e| invalid(s, e.to_string()))?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A tag is what follows the last ':' when no '/' comes after it; otherwise that ':'
        // belongs to a registry port (`localhost:5000/app`).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(s, t)?;
        }
        let (registry, repository) = split_registry(s, name)?;
        validate_repository(s, &repository)?;
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host, with its port when it has one (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when the reference named neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository pinned to `digest` (the tag is dropped: a digest says it all).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<ImageRef, ReferenceError> {
        validate_tag(&format!("{}:{tag}", self.name()), tag)?;
        Ok(ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The reference in the form oci-client takes.
    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        let registry = self.registry.clone();
        let repository = self.repository.clone();
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                t.clone(),
                d.to_string(),
            ),
            (None, Some(d)) => {
                oci_client::Reference::with_digest(registry, repository, d.to_string())
            }
            (Some(t), None) => oci_client::Reference::with_tag(registry, repository, t.clone()),
            (None, None) => {
                oci_client::Reference::with_tag(registry, repository, DEFAULT_TAG.to_owned())
            }
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({self})")
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImageRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// The canonical form of a registry host: lowercase, Docker Hub's aliases folded into
/// `docker.io`. Used for references and credential keys alike so they always meet.
pub fn normalize_registry(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&lower.as_str()) {
        DOCKER_HUB.to_owned()
    } else {
        lower
    }
}

/// The registry host a user-written name means: `https://index.docker.io/v1/`,
/// `http://host:5000` or `host:5000/` lose their scheme and path, then are normalised. Used
/// for credential keys and `--insecure-registry` values.
pub fn registry_host(name: &str) -> String {
    let name = name.trim();
    let rest = name
        .strip_prefix("https://")
        .or_else(|| name.strip_prefix("http://"))
        .unwrap_or(name);
    let host = rest.split('/').next().unwrap_or(rest);
    normalize_registry(host)
}

/// Splits `name` into registry and repository, applying Docker Hub's defaults.
fn split_registry(whole: &str, name: &str) -> Result<(String, String), ReferenceError> {
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            validate_host(whole, first)?;
            (normalize_registry(first), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("{OFFICIAL_PREFIX}{repository}")
    } else {
        repository
    };
    Ok((registry, repository))
}

/// `host`, `host:port` or `[v6]:port`.
fn validate_host(whole: &str, host: &str) -> Result<(), ReferenceError> {
    let (name, port) = if let Some(stripped) = host.strip_prefix('[') {
        let Some((addr, after)) = stripped.split_once(']') else {
            return Err(invalid(
                whole,
                format!("registry {host:?} has an unclosed '['"),
            ));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid(
                whole,
                format!("registry {host:?} is not an IPv6 address"),
            ));
        }
        match after {
            "" => return Ok(()),
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Err(invalid(whole, format!("registry {host:?} is malformed"))),
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(invalid(
            whole,
            format!("registry port {port:?} is not a number from 0 to 65535"),
        ));
    }
    if !name.is_empty() || !host.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(invalid(
                whole,
                format!("registry host {name:?} is not a valid host name"),
            ));
        }
    }
    Ok(())
}

/// Repository components: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn validate_repository(whole: &str, repository: &str) -> Result<(), ReferenceError> {
    if repository.is_empty() {
        return Err(invalid(whole, "the repository name is empty"));
    }
    if repository.len() > MAX_NAME_LEN {
        return Err(invalid(
            whole,
            format!("the repository name is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    for component in repository.split('/') {
        if !component_ok(component) {
            let hint = if component.chars().any(|c| c.is_ascii_uppercase()) {
                " (repository names must be lowercase)"
            } else {
                ""
            };
            return Err(invalid(
                whole,
                format!("repository component {component:?} is not valid{hint}"),
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators between alphanumeric runs: one '.', one or two '_', or any number of '-'.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(whole: &str, tag: &str) -> Result<(), ReferenceError> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.chars().next().is_some_and(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            whole,
            format!(
                "tag {tag:?} is not valid (letters, digits, '_', '.', '-', at most {MAX_TAG_LEN}, not starting with '.' or '-')"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageRef::parse(s).unwrap();
        (
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(|d| d.to_string()),
        )
    }

    fn p(
        reg: &str,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> (String, String, Option<String>, Option<String>) {
        (
            reg.to_owned(),
            repo.to_owned(),
            tag.map(str::to_owned),
            digest.map(str::to_owned),
        )
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(
            parts("busybox"),
            p("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            parts("busybox:1.36"),
            p("docker.io", "library/busybox", Some("1.36"), None)
        );
        assert_eq!(
            parts("bitnami/redis"),
            p("docker.io", "bitnami/redis", Some("latest"), None)
        );
        assert_eq!(
            parts("index.docker.io/library/busybox"),
            p("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            parts("docker.io/busybox"),
            p("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            ImageRef::parse("busybox").unwrap(),
            ImageRef::parse("docker.io/library/busybox:latest").unwrap()
        );
        assert_eq!(
            ImageRef::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn hosts_ports_and_localhost() {
        assert_eq!(
            parts("127.0.0.1:5000/app:v1"),
            p("127.0.0.1:5000", "app", Some("v1"), None)
        );
        assert_eq!(
            parts("localhost/app"),
            p("localhost", "app", Some("latest"), None)
        );
        assert_eq!(
            parts("localhost:5000/team/app"),
            p("localhost:5000", "team/app", Some("latest"), None)
        );
        assert_eq!(
            parts("Registry.Example.com/a/b/c:t"),
            p("registry.example.com", "a/b/c", Some("t"), None)
        );
        assert_eq!(
            parts("[::1]:5000/app"),
            p("[::1]:5000", "app", Some("latest"), None)
        );
        // Without '.', ':' or "localhost" the first component is a Docker Hub namespace.
        assert_eq!(
            parts("myhost/app"),
            p("docker.io", "myhost/app", Some("latest"), None)
        );
    }

    #[test]
    fn digests_and_tags() {
        assert_eq!(
            parts(&format!("busybox@{D}")),
            p("docker.io", "library/busybox", None, Some(D))
        );
        assert_eq!(
            parts(&format!("localhost:5000/app:v2@{D}")),
            p("localhost:5000", "app", Some("v2"), Some(D))
        );
        let r = ImageRef::parse("localhost:5000/app:v2").unwrap();
        let pinned = r.with_digest(Digest::parse(D).unwrap());
        assert_eq!(pinned.to_string(), format!("localhost:5000/app@{D}"));
        assert_eq!(
            r.with_tag("v3").unwrap().to_string(),
            "localhost:5000/app:v3"
        );
        assert!(r.with_tag("-bad").is_err());
    }

    #[test]
    fn errors_name_the_reference() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
            "localhost:99999/app",
            "localhost:5000/",
            "a//b",
            "app/.hidden",
            "a b",
            "reg.example.com/App",
            "[::1/app",
            "-bad.example.com/app",
        ] {
            let err = ImageRef::parse(bad).expect_err(bad);
            assert_eq!(err.reference, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = ImageRef::parse("reg.example.com/App").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
    }

    #[test]
    fn repository_components() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "a-b.c_d", "0"] {
            assert!(component_ok(ok), "{ok}");
        }
        for bad in ["", "a.", ".a", "a..b", "a___b", "a._b", "A", "a-"] {
            assert!(!component_ok(bad), "{bad}");
        }
    }

    #[test]
    fn registry_hosts_from_user_forms() {
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host(" http://Reg.Lan:5000/v2/ "), "reg.lan:5000");
        assert_eq!(registry_host("reg.lan:5000/"), "reg.lan:5000");
        assert_eq!(registry_host("[::1]:5000"), "[::1]:5000");
    }

    #[test]
    fn serde_uses_the_normalised_text() {
        let r: ImageRef = serde_json::from_str(r#""busybox:1""#).unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#""docker.io/library/busybox:1""#
        );
        let err = serde_json::from_str::<ImageRef>(r#""Bad""#).unwrap_err();
        assert!(err.to_string().contains("\"Bad\""), "{err}");
    }

    #[test]
    fn oci_conversion_keeps_the_parts() {
        let r = ImageRef::parse("busybox").unwrap().to_oci();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.resolve_registry(), "index.docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
    }
}
