//! Between [`ImageState`] and `stagecoach-oci`'s image config: a base image's config becomes
//! the state a stage starts from, and the state is written back into the config of the
//! image the stage produces. Fields the state does not model (Docker's `Hostname`,
//! `ArgsEscaped`, unknown keys) stay in the config untouched, because `write_to` edits the
//! config in place rather than rebuilding it.

use stagecoach_oci::config::{ContainerConfig, HealthConfig, History, ImageConfig};

use crate::image_state::{HealthState, HistoryEntry, ImageState};

fn ns_in(v: Option<i64>) -> u64 {
    v.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

fn ns_out(v: u64) -> Option<i64> {
    (v != 0).then(|| i64::try_from(v).unwrap_or(i64::MAX))
}

impl ImageState {
    /// The state a stage starts from when its base image has this config (PATH added when
    /// missing, build environment = Env, no ARGs).
    pub fn from_image_config(image: &ImageConfig) -> Self {
        let default = ContainerConfig::default();
        let c = image.config.as_ref().unwrap_or(&default);
        let state = ImageState {
            env: c
                .env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.clone(), String::new()),
                })
                .collect(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            user: c.user.clone().unwrap_or_default(),
            shell: c.shell.clone().filter(|s| !s.is_empty()),
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            exposed_ports: c.exposed_ports.clone(),
            volumes: c.volumes.clone(),
            labels: c.labels.clone(),
            author: image.author.clone(),
            stop_signal: c.stop_signal.clone(),
            healthcheck: c.healthcheck.as_ref().map(|h| HealthState {
                test: h.test.clone(),
                interval_ns: ns_in(h.interval_ns),
                timeout_ns: ns_in(h.timeout_ns),
                start_period_ns: ns_in(h.start_period_ns),
                start_interval_ns: ns_in(h.start_interval_ns),
                retries: h.retries.and_then(|r| u32::try_from(r).ok()).unwrap_or(0),
            }),
            on_build: c.on_build.clone(),
            ..ImageState::default()
        };
        state.start_stage()
    }

    /// Writes the state into `image` (author and runtime config); ARGs and the build
    /// environment never go there.
    pub fn write_to(&self, image: &mut ImageConfig) {
        image.author = self.author.clone();
        let c = image.container_config_mut();
        c.env = self.env_strings();
        c.working_dir = (!self.working_dir.is_empty()).then(|| self.working_dir.clone());
        c.user = (!self.user.is_empty()).then(|| self.user.clone());
        c.shell = self.shell.clone();
        c.entrypoint = self.entrypoint.clone();
        c.cmd = self.cmd.clone();
        c.exposed_ports = self.exposed_ports.clone();
        c.volumes = self.volumes.clone();
        c.labels = self.labels.clone();
        c.stop_signal = self.stop_signal.clone();
        c.healthcheck = self.healthcheck.as_ref().map(|h| HealthConfig {
            test: h.test.clone(),
            interval_ns: ns_out(h.interval_ns),
            timeout_ns: ns_out(h.timeout_ns),
            start_period_ns: ns_out(h.start_period_ns),
            start_interval_ns: ns_out(h.start_interval_ns),
            retries: (h.retries != 0).then_some(i64::from(h.retries)),
        });
        c.on_build = self.on_build.clone();
    }
}

impl HistoryEntry {
    /// The OCI history entry, with the build's timestamp (RFC 3339) if any.
    pub fn to_oci(&self, created: Option<String>) -> History {
        History {
            created,
            created_by: Some(self.created_by.clone()),
            author: None,
            comment: Some(self.comment.clone()),
            empty_layer: self.empty_layer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_state::{ArgSource, DEFAULT_PATH};
    use stagecoach_dockerfile::Dockerfile;
    use stagecoach_dockerfile::shell::ShellLex;

    #[test]
    fn round_trip_through_an_image_config() {
        let base = ImageConfig::from_json(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                "config":{"Env":["HOME=/root"],"Cmd":["sh"],"Hostname":"kept",
                          "Healthcheck":{"Test":["CMD","true"],"Interval":1000000000,"Retries":2},
                          "OnBuild":["RUN echo base"]}}"#,
        )
        .unwrap();
        let mut state = ImageState::from_image_config(&base);
        assert_eq!(state.env[1], ("PATH".to_string(), DEFAULT_PATH.to_string()));
        assert_eq!(state.healthcheck.as_ref().unwrap().retries, 2);
        assert_eq!(state.take_onbuild_triggers(), ["RUN echo base"]);

        let d = Dockerfile::parse(
            "FROM x\nARG SECRET=s\nENV A=1\nENTRYPOINT [\"/app\"]\nUSER app\nLABEL l=v\nMAINTAINER me\n",
        )
        .unwrap();
        let lex = ShellLex::new('\\');
        for i in &d.stages[0].instructions {
            state
                .apply(&lex, &i.instruction, &ArgSource::default())
                .unwrap();
        }
        let mut out = base.clone();
        state.write_to(&mut out);
        let c = out.config.as_ref().unwrap();
        assert_eq!(
            c.env,
            ["HOME=/root", &format!("PATH={DEFAULT_PATH}"), "A=1"]
        );
        assert_eq!(c.cmd, None, "ENTRYPOINT reset the inherited CMD");
        assert_eq!(c.entrypoint, Some(vec!["/app".to_string()]));
        assert_eq!(c.user.as_deref(), Some("app"));
        assert!(c.on_build.is_empty());
        assert_eq!(c.extra["Hostname"], "kept");
        assert_eq!(out.author.as_deref(), Some("me"));
        assert_eq!(
            c.healthcheck.as_ref().unwrap().interval_ns,
            Some(1_000_000_000)
        );
        assert!(!c.env.iter().any(|e| e.starts_with("SECRET=")));
    }
}
