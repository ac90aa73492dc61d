//! The image config: what a container runs (`config`), the layer chain (`rootfs.diff_ids`) and
//! the build history. It reads OCI configs and Docker `container.image.v1` configs, which
//! share one shape, and keeps the Docker-only fields a Dockerfile needs (Healthcheck,
//! OnBuild, Shell) as first-class fields. Fields this version does not know are carried
//! along untouched so a base image's config is never silently trimmed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::digest::Digest;
use crate::json::{self, JsonError};
use crate::manifest::{Descriptor, Platform};
use crate::media_type;

/// Why a config could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not the JSON of an image config.
    #[error("invalid image config: {0}")]
    Json(#[source] serde_json::Error),
    /// Canonical encoding failed.
    #[error(transparent)]
    Encode(#[from] JsonError),
}

/// The OCI image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time, RFC 3339. Set from SOURCE_DATE_EPOCH for reproducible builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author (the deprecated MAINTAINER instruction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture, GOARCH spelling.
    pub architecture: String,
    /// Operating system, GOOS spelling.
    pub os: String,
    /// OS version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features.
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// What a container of this image runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// The layer chain.
    pub rootfs: RootFs,
    /// One entry per instruction, base first; `empty_layer` entries made no layer.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
    /// Fields this version does not know (Docker's `container_config`, `docker_version`, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The runtime part of the config. Field names are Docker's capitalised ones, as the OCI
/// spec adopted them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// USER: name or uid, optionally `:group`.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// EXPOSE: `80/tcp`, `53/udp`.
    #[serde(
        rename = "ExposedPorts",
        default,
        with = "object_set",
        skip_serializing_if = "BTreeSet::is_empty"
    )]
    pub exposed_ports: BTreeSet<String>,
    /// ENV, in order, as `KEY=value`.
    #[serde(
        rename = "Env",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    /// ENTRYPOINT. `None` (unset) differs from `Some([])` (reset by `ENTRYPOINT []`).
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// CMD; the same distinction as for ENTRYPOINT.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// VOLUME.
    #[serde(
        rename = "Volumes",
        default,
        with = "object_set",
        skip_serializing_if = "BTreeSet::is_empty"
    )]
    pub volumes: BTreeSet<String>,
    /// WORKDIR.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// LABEL.
    #[serde(
        rename = "Labels",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// STOPSIGNAL.
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
    /// HEALTHCHECK (Docker extension).
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<HealthConfig>,
    /// ONBUILD triggers, run when this image is used as a base (Docker extension).
    #[serde(
        rename = "OnBuild",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    /// SHELL for shell-form instructions (Docker extension); `None` means `/bin/sh -c`.
    #[serde(rename = "Shell", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Fields this version does not know (`Hostname`, `Tty`, `ArgsEscaped`, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// HEALTHCHECK settings. Durations are nanoseconds, as Docker stores them; zero or absent
/// means "inherit the default".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args…]` or `["CMD-SHELL", command]`.
    #[serde(
        rename = "Test",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    /// Time between checks.
    #[serde(rename = "Interval", default, skip_serializing_if = "Option::is_none")]
    pub interval_ns: Option<i64>,
    /// Time one check may take.
    #[serde(rename = "Timeout", default, skip_serializing_if = "Option::is_none")]
    pub timeout_ns: Option<i64>,
    /// Grace period after start.
    #[serde(
        rename = "StartPeriod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub start_period_ns: Option<i64>,
    /// Interval during the start period.
    #[serde(
        rename = "StartInterval",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub start_interval_ns: Option<i64>,
    /// Consecutive failures before unhealthy.
    #[serde(rename = "Retries", default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

/// The layer chain: digests of the uncompressed layers, base first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// DiffIDs, base first.
    #[serde(default, deserialize_with = "nullable")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry, normally one per Dockerfile instruction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct History {
    /// When, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction, as BuildKit spells it (`RUN /bin/sh -c make # buildkit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the instruction made no layer (metadata-only instructions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// An empty config for `linux/<architecture>` with no layers.
    pub fn new_linux(architecture: &str) -> Self {
        ImageConfig {
            created: None,
            author: None,
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            os_version: None,
            os_features: Vec::new(),
            variant: None,
            config: None,
            rootfs: RootFs::default(),
            history: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    /// Parses an OCI or Docker image config.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(bytes).map_err(ConfigError::Json)
    }

    /// Canonical JSON bytes.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ConfigError> {
        Ok(json::to_canonical_vec(self, "image config")?)
    }

    /// Canonical bytes and the OCI descriptor that names them.
    pub fn to_blob(&self) -> Result<(Vec<u8>, Descriptor), ConfigError> {
        let bytes = self.to_canonical_json()?;
        let desc = Descriptor::new(
            media_type::OCI_CONFIG,
            Digest::of_bytes(&bytes),
            bytes.len() as u64,
        );
        Ok((bytes, desc))
    }

    /// The runtime config, created empty on first use.
    pub fn container_config_mut(&mut self) -> &mut ContainerConfig {
        self.config.get_or_insert_with(ContainerConfig::default)
    }

    /// Records an instruction that produced a layer.
    pub fn push_layer(&mut self, diff_id: Digest, history: History) {
        self.rootfs.diff_ids.push(diff_id);
        self.history.push(History {
            empty_layer: false,
            ..history
        });
    }

    /// Records an instruction that produced no layer.
    pub fn push_empty(&mut self, history: History) {
        self.history.push(History {
            empty_layer: true,
            ..history
        });
    }

    /// The platform this config describes.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// The ChainIDs of a layer stack: the first is the first diffID, each next one is
/// `sha256(previous + " " + diffID)`. A ChainID names a whole stack of layers, so it is what
/// a cache of unpacked roots or of instruction results keys on.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of_bytes(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Formats Unix seconds as RFC 3339 UTC (`1970-01-01T00:00:00Z`), the form the `created`
/// fields take. Written here to keep a date library out of the dependency tree.
pub fn rfc3339_utc(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        (secs_of_day % 3600) / 60,
        secs_of_day % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01, by the era method (eras of
/// 400 years have a fixed number of days, which makes leap years arithmetic).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Treats JSON `null` as the empty value: Docker writes `"Env": null`, `"OnBuild": null`.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Sets stored as JSON objects with empty values (`{"80/tcp": {}}`), as the spec has them.
mod object_set {
    use super::*;

    pub fn serialize<S: Serializer>(set: &BTreeSet<String>, s: S) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<&str, BTreeMap<String, Value>> =
            set.iter().map(|k| (k.as_str(), BTreeMap::new())).collect();
        map.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<String>, D::Error> {
        let map = Option::<BTreeMap<String, Value>>::deserialize(d)?;
        Ok(map.unwrap_or_default().into_keys().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec_formula() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of_bytes(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn docker_config_with_nulls_and_extensions() {
        let doc = br##"{
          "architecture":"amd64","os":"linux","docker_version":"20.10.7",
          "config":{"Hostname":"","Env":["PATH=/usr/bin"],"Cmd":["sh"],"Entrypoint":null,
            "OnBuild":null,"Labels":null,"ExposedPorts":{"80/tcp":{}},"Volumes":null,
            "Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":30000000000,"Retries":3},
            "Shell":["/bin/bash","-c"],"StopSignal":"SIGQUIT"},
          "container_config":{"Cmd":["/bin/sh","-c","#(nop) CMD [\"sh\"]"]},
          "rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]},
          "history":[{"created":"2021-01-01T00:00:00Z","created_by":"ADD file:x in /"},
                     {"created_by":"CMD [\"sh\"]","empty_layer":true}]}"##;
        let cfg = ImageConfig::from_json(doc).unwrap();
        let c = cfg.config.as_ref().unwrap();
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.cmd.as_deref(), Some(&["sh".to_owned()][..]));
        assert!(c.exposed_ports.contains("80/tcp"));
        assert_eq!(c.healthcheck.as_ref().unwrap().retries, Some(3));
        assert_eq!(c.shell.as_ref().unwrap()[0], "/bin/bash");
        assert!(c.extra.contains_key("Hostname"));
        assert!(cfg.extra.contains_key("container_config"));
        assert!(cfg.history[1].empty_layer);
        let out = String::from_utf8(cfg.to_canonical_json().unwrap()).unwrap();
        assert!(out.contains(r#""ExposedPorts":{"80/tcp":{}}"#), "{out}");
        assert!(!out.contains("null"), "{out}");
        let again = ImageConfig::from_json(out.as_bytes()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn empty_entrypoint_is_kept_distinct_from_unset() {
        let mut cfg = ImageConfig::new_linux("amd64");
        cfg.container_config_mut().entrypoint = Some(Vec::new());
        let out = String::from_utf8(cfg.to_canonical_json().unwrap()).unwrap();
        assert!(out.contains(r#""Entrypoint":[]"#), "{out}");
        assert!(!out.contains("Cmd"), "{out}");
    }
}
