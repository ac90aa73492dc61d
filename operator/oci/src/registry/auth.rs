//! Registry credentials from a docker `config.json` or a `kubernetes.io/dockerconfigjson`
//! Secret's `.dockerconfigjson` (the same document), and the legacy `.dockercfg` form (the
//! `auths` map without its wrapper).
//!
//! Keys are matched by host: `https://index.docker.io/v1/`, `docker.io` and
//! `registry-1.docker.io` all mean Docker Hub; a scheme and a path are ignored; a port must
//! match exactly (`host` does not cover `host:5000`, as with Docker and the kubelet); a
//! `*.example.com` key covers one level of subdomain. A registry without an entry is accessed
//! anonymously. Credential helpers (`credsStore`, `credHelpers`) need external programs and
//! are not run.
//!
//! Secrets never reach a log: the `Debug` impls print `<redacted>`, and parse errors carry
//! only a position, never the text around it (serde's messages can quote values).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::reference::{normalize_registry, registry_host};

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("registry credentials: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The document is not a docker config (the position only: the text may hold secrets).
    #[error("registry credentials{}: not a docker config.json document (line {line}, column {column})", origin(.path))]
    Json {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Line of the problem.
        line: usize,
        /// Column of the problem.
        column: usize,
    },
    /// An entry's `auth` field is not base64 of `user:password`.
    #[error("registry credentials{}: the auth field of the entry for {registry:?} is not base64 of user:password", origin(.path))]
    BadAuth {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The entry's key.
        registry: String,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

/// What to present to one registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credential {
    /// Nothing; the registry's anonymous access (or a bearer token it hands out freely).
    #[default]
    Anonymous,
    /// User name and password (or a personal access token used as one).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// A docker `identitytoken` (an OAuth2 refresh token). oci-client has no refresh-token
    /// grant, so it is presented as the password of a basic login to the token service,
    /// which is what registries issuing such tokens (ACR, for instance) accept.
    IdentityToken {
        /// The user name stored with it (often a fixed placeholder).
        username: String,
        /// The token.
        token: String,
    },
    /// A registry token (`registrytoken`), sent as a bearer token as is.
    Bearer {
        /// The token.
        token: String,
    },
}

impl Credential {
    /// Whether this is [`Credential::Anonymous`].
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credential::Anonymous)
    }

    pub(crate) fn to_registry_auth(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credential::IdentityToken { username, token } => {
                let user = if username.is_empty() {
                    "<token>"
                } else {
                    username
                };
                RegistryAuth::Basic(user.to_owned(), token.clone())
            }
            Credential::Bearer { token } => RegistryAuth::Bearer(token.clone()),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            Credential::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Credentials by registry host.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Normalised host (`docker.io`, `host:port`, `*.example.com`) → credential.
    by_host: BTreeMap<String, Credential>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hosts and kinds only; `Credential`'s Debug already redacts, this keeps it short.
        f.debug_map().entries(self.by_host.iter()).finish()
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl Credentials {
    /// No credentials: every registry is accessed anonymously.
    pub fn anonymous() -> Self {
        Credentials::default()
    }

    /// Reads a docker `config.json` / `.dockerconfigjson` file.
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let bytes = std::fs::read(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes, Some(path))
    }

    /// Where docker keeps its config: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`. `None` when neither variable is set.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
    }

    /// Like [`Credentials::from_file`], but a missing file means no credentials (a machine
    /// that never ran `docker login`).
    pub fn from_file_if_exists(path: &Path) -> Result<Self, CredentialsError> {
        match Self::from_file(path) {
            Err(CredentialsError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Credentials::anonymous())
            }
            other => other,
        }
    }

    /// Parses the JSON of a docker `config.json` / `.dockerconfigjson`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CredentialsError> {
        Self::parse(bytes, None)
    }

    fn parse(bytes: &[u8], path: Option<&Path>) -> Result<Self, CredentialsError> {
        let json_err = |e: serde_json::Error| CredentialsError::Json {
            path: path.map(Path::to_owned),
            line: e.line(),
            column: e.column(),
        };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json_err)?;
        let file: ConfigFile = serde_json::from_value(value.clone()).map_err(json_err)?;
        let entries = match file.auths {
            Some(auths) => auths,
            // The legacy `.dockercfg` is the `auths` map itself. A config.json without
            // `auths` (only `credsStore`, say) yields nothing from this.
            None => {
                serde_json::from_value::<BTreeMap<String, AuthEntry>>(value).unwrap_or_default()
            }
        };
        let mut out = Credentials::default();
        for (key, entry) in entries {
            let Some(cred) = entry_credential(&key, entry, path)? else {
                continue;
            };
            out.by_host.insert(registry_host(&key), cred);
        }
        Ok(out)
    }

    /// Adds or replaces the credential for a registry (`--creds`-style overrides, tests).
    pub fn insert(&mut self, registry: &str, credential: Credential) {
        self.by_host.insert(registry_host(registry), credential);
    }

    /// The credential for a registry host (`docker.io`, `host:port`), anonymous when none.
    pub fn lookup(&self, registry: &str) -> Credential {
        let host = normalize_registry(registry);
        if let Some(c) = self.by_host.get(&host) {
            return c.clone();
        }
        // `*.example.com` covers exactly one more label, without a port of its own.
        if let Some((_, parent)) = host.split_once('.') {
            let (parent, port) = match parent.rsplit_once(':') {
                Some((p, port)) => (p, Some(port)),
                None => (parent, None),
            };
            let key = match port {
                Some(port) => format!("*.{parent}:{port}"),
                None => format!("*.{parent}"),
            };
            if let Some(c) = self.by_host.get(&key) {
                return c.clone();
            }
        }
        Credential::Anonymous
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

fn entry_credential(
    key: &str,
    entry: AuthEntry,
    path: Option<&Path>,
) -> Result<Option<Credential>, CredentialsError> {
    let bad = || CredentialsError::BadAuth {
        path: path.map(Path::to_owned),
        registry: key.to_owned(),
    };
    let (mut username, mut password) = (entry.username, entry.password);
    // Like Docker, a non-empty `auth` wins over separate username/password fields.
    if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        let (u, p) = text.split_once(':').ok_or_else(bad)?;
        username = Some(u.to_owned());
        password = Some(p.to_owned());
    }
    if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken {
            username: username.unwrap_or_default(),
            token,
        }));
    }
    if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::Bearer { token }));
    }
    match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Ok(Some(Credential::Basic { username, password }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.to_owned(),
            password: p.to_owned(),
        }
    }

    #[test]
    fn key_forms_match_hosts() {
        let doc = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "registry.example.com":{{"username":"bob","password":"pw2"}},
                "http://127.0.0.1:5000/v2/":{{"auth":"{}"}},
                "*.corp.example":{{"auth":"{}"}},
                "empty.example.com":{{}}
            }}}}"#,
            b64("alice:pw1"),
            b64("carol:pa:ss"),
            b64("dave:pw4")
        );
        let c = Credentials::from_json(doc.as_bytes()).unwrap();
        assert_eq!(c.lookup("docker.io"), basic("alice", "pw1"));
        assert_eq!(c.lookup("index.docker.io"), basic("alice", "pw1"));
        assert_eq!(c.lookup("registry.example.com"), basic("bob", "pw2"));
        assert_eq!(c.lookup("Registry.Example.com"), basic("bob", "pw2"));
        // A password may contain ':'; only the first one separates.
        assert_eq!(c.lookup("127.0.0.1:5000"), basic("carol", "pa:ss"));
        // Ports must match exactly.
        assert_eq!(c.lookup("127.0.0.1"), Credential::Anonymous);
        assert_eq!(c.lookup("registry.example.com:5000"), Credential::Anonymous);
        assert_eq!(c.lookup("a.corp.example"), basic("dave", "pw4"));
        assert_eq!(c.lookup("a.b.corp.example"), Credential::Anonymous);
        assert_eq!(c.lookup("empty.example.com"), Credential::Anonymous);
        assert_eq!(c.lookup("other.example.com"), Credential::Anonymous);
    }

    #[test]
    fn tokens_and_legacy_form() {
        let doc = r#"{"auths":{"acr.example.io":{"username":"00000000-0000-0000-0000-000000000000","identitytoken":"rt"},
                      "tok.example.io":{"registrytoken":"bt"}}}"#;
        let c = Credentials::from_json(doc.as_bytes()).unwrap();
        assert_eq!(
            c.lookup("acr.example.io"),
            Credential::IdentityToken {
                username: "00000000-0000-0000-0000-000000000000".to_owned(),
                token: "rt".to_owned()
            }
        );
        assert_eq!(
            c.lookup("tok.example.io"),
            Credential::Bearer {
                token: "bt".to_owned()
            }
        );
        let legacy = format!(
            r#"{{"old.example.io":{{"auth":"{}","email":"x@y"}}}}"#,
            b64("u:p")
        );
        let c = Credentials::from_json(legacy.as_bytes()).unwrap();
        assert_eq!(c.lookup("old.example.io"), basic("u", "p"));
        let helpers_only = br#"{"credsStore":"desktop"}"#;
        assert!(Credentials::from_json(helpers_only).unwrap().is_empty());
    }

    #[test]
    fn errors_and_debug_never_show_secrets() {
        let c = Credentials::from_json(
            format!(
                r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#,
                b64("user:hunter2")
            )
            .as_bytes(),
        )
        .unwrap();
        let shown = format!("{c:?} {:?}", c.lookup("r.io"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user"), "{shown}");
        let tok = format!(
            "{:?} {:?}",
            Credential::Bearer {
                token: "hunter2".into()
            },
            Credential::IdentityToken {
                username: "u".into(),
                token: "hunter2".into()
            }
        );
        assert!(!tok.contains("hunter2"), "{tok}");

        // A type error would make serde quote the value; ours reports a position only.
        let err = Credentials::from_json(br#"{"auths":{"r.io":{"auth":12345678}}}"#).unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
        let err =
            Credentials::from_json(br#"{"auths":{"r.io":{"auth":"!!hunter2!!"}}}"#).unwrap_err();
        assert!(matches!(err, CredentialsError::BadAuth { .. }));
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let no_colon = format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("hunter2"));
        assert!(Credentials::from_json(no_colon.as_bytes()).is_err());
    }

    #[test]
    fn file_errors_name_the_path() {
        let err = Credentials::from_file(Path::new("/nonexistent/config.json")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/config.json"),
            "{err}"
        );
    }
}
