//! The OCI runtime configuration (`config.json`) for one RUN step: what a Docker `RUN` gets
//! by default (capabilities, namespaces, `/proc`, `/dev`, `/sys`, masked paths), narrowed to
//! what this machine allows (no systemd, hybrid cgroups v1, `RLIMIT_NOFILE` capped by the
//! host's hard limit), plus the request's own mounts. Pure: the caller decides where files
//! live and writes the JSON.

use std::path::{Component, Path};

use serde_json::{Value, json};

use super::RuncError;
use crate::runner::{RunMount, RunNetwork, RunRequest};

/// The capabilities Docker gives a container (and so a `RUN` step) by default.
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from the process (bind of /dev/null or an empty read-only tmpfs), as in
/// Docker's default: they leak host details or allow poking the kernel.
const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only, as in Docker's default: writes there would change the host kernel.
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The device nodes every container gets: (path, major, minor). runc creates them with
/// mknod inside the `/dev` tmpfs, so they never touch the root filesystem.
const DEVICES: [(&str, i64, i64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// What has to exist inside the root filesystem before runc mounts over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mountpoint {
    /// An empty directory (the mount's source is a directory or a filesystem).
    Dir,
    /// An empty regular file (the mount's source is a file).
    File,
    /// Nothing in the root: the destination lies inside an earlier mount, where runc creates
    /// it (in that mount, not in the root).
    InsideEarlierMount,
}

/// One mount of the configuration, with what it needs in the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlannedMount {
    /// Absolute, normalised path inside the container.
    pub destination: String,
    /// The OCI mount entry.
    pub entry: Value,
    /// What must exist in the root filesystem at `destination`.
    pub mountpoint: Mountpoint,
}

/// Inputs that are not in the request: where the generated files are and what the host
/// allows.
#[derive(Debug, Clone)]
pub(super) struct Host<'a> {
    /// The generated hosts file (in the bundle).
    pub hosts_file: &'a Path,
    /// The generated resolv.conf (in the bundle).
    pub resolv_file: &'a Path,
    /// Unique cgroup path for this run.
    pub cgroups_path: &'a str,
    /// `RLIMIT_NOFILE` for the process (soft = hard).
    pub nofile: u64,
    /// Whether to set `noNewPrivileges`.
    pub no_new_privileges: bool,
    /// System calls a seccomp filter refuses with `EPERM` (none: no filter).
    pub denied_syscalls: &'a [String],
}

/// Normalises a path inside the container: absolute, no `..` (a mount must say where it goes
/// without relying on what the root contains), not `/` itself.
pub(super) fn container_path(path: &Path) -> Result<String, RuncError> {
    let mut out = String::new();
    if !path.is_absolute() {
        return Err(RuncError::Invalid(format!(
            "{} is not an absolute path inside the container",
            path.display()
        )));
    }
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => {
                let name = name.to_str().ok_or_else(|| {
                    RuncError::Invalid(format!("{} is not valid UTF-8", path.display()))
                })?;
                out.push('/');
                out.push_str(name);
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(RuncError::Invalid(format!(
                    "{} must not contain '..'",
                    path.display()
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(RuncError::Invalid("cannot mount over / itself".to_string()));
    }
    Ok(out)
}

/// Whether `path` is `base` or below it (component-wise).
fn is_within(path: &str, base: &str) -> bool {
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The mounts in the order runc applies them: the standard filesystems, the generated
/// `/etc/hosts` and `/etc/resolv.conf`, then the request's mounts.
pub(super) fn plan_mounts(
    request: &RunRequest,
    host: &Host<'_>,
) -> Result<Vec<PlannedMount>, RuncError> {
    let path_str = |p: &Path| -> Result<String, RuncError> {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| RuncError::Invalid(format!("{} is not valid UTF-8", p.display())))
    };
    let mut raw: Vec<(String, Value, bool)> = vec![
        (
            "/proc".into(),
            json!({"destination": "/proc", "type": "proc", "source": "proc",
                   "options": ["nosuid", "noexec", "nodev"]}),
            false,
        ),
        (
            "/dev".into(),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            false,
        ),
        (
            "/dev/pts".into(),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
            false,
        ),
        (
            "/dev/shm".into(),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
            false,
        ),
        (
            "/dev/mqueue".into(),
            json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                   "options": ["nosuid", "noexec", "nodev"]}),
            false,
        ),
        (
            "/sys".into(),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]}),
            false,
        ),
        (
            "/etc/hosts".into(),
            json!({"destination": "/etc/hosts", "type": "bind", "source": path_str(host.hosts_file)?,
                   "options": ["rbind", "rw"]}),
            true,
        ),
        (
            "/etc/resolv.conf".into(),
            json!({"destination": "/etc/resolv.conf", "type": "bind",
                   "source": path_str(host.resolv_file)?, "options": ["rbind", "rw"]}),
            true,
        ),
    ];
    for mount in &request.mounts {
        match mount {
            RunMount::Bind {
                source,
                target,
                readonly,
            } => {
                let destination = container_path(target)?;
                // The source decides whether the mount point is a file or a directory, as
                // runc itself would; a missing source is the executor's bug, said clearly.
                let meta = std::fs::metadata(source).map_err(|e| RuncError::Io {
                    what: format!("bind mount source {}", source.display()),
                    source: e,
                })?;
                let access = if *readonly { "ro" } else { "rw" };
                let entry = json!({"destination": destination, "type": "bind",
                    "source": path_str(source)?, "options": ["rbind", access]});
                raw.push((destination, entry, !meta.is_dir()));
            }
            RunMount::Tmpfs { target, size_bytes } => {
                let destination = container_path(target)?;
                // mode=1777 like Docker's tmpfs mounts, so a non-root RUN can use it too.
                let mut options = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "mode=1777".to_string(),
                ];
                if let Some(size) = size_bytes {
                    options.push(format!("size={size}"));
                }
                let entry = json!({"destination": destination, "type": "tmpfs",
                    "source": "tmpfs", "options": options});
                raw.push((destination, entry, false));
            }
        }
    }
    let mut planned: Vec<PlannedMount> = Vec::with_capacity(raw.len());
    for (destination, entry, is_file) in raw {
        // A destination strictly inside an earlier mount is created by runc in that mount
        // (a tmpfs, or a bind source the executor chose); only the rest needs a mount point
        // in the root filesystem.
        let inside = planned
            .iter()
            .any(|m| m.destination != destination && is_within(&destination, &m.destination));
        let mountpoint = if inside {
            Mountpoint::InsideEarlierMount
        } else if is_file {
            Mountpoint::File
        } else {
            Mountpoint::Dir
        };
        planned.push(PlannedMount {
            destination,
            entry,
            mountpoint,
        });
    }
    Ok(planned)
}

/// The whole `config.json`.
pub(super) fn config(
    request: &RunRequest,
    rootfs: &Path,
    cwd: &str,
    env: &[String],
    mounts: &[PlannedMount],
    host: &Host<'_>,
) -> Result<Value, RuncError> {
    let rootfs = rootfs
        .to_str()
        .ok_or_else(|| RuncError::Invalid(format!("{} is not valid UTF-8", rootfs.display())))?;
    // A non-root process loses its permitted and effective capabilities at execve anyway
    // (no file capabilities, no ambient set), so giving them only to root says the same
    // thing honestly; the bounding set still limits what setuid programs can regain.
    let granted: Vec<&str> = if request.user.uid == 0 {
        DEFAULT_CAPABILITIES.to_vec()
    } else {
        Vec::new()
    };
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if request.network == RunNetwork::None {
        // A new network namespace holds only `lo`, which runc brings up.
        namespaces.push(json!({"type": "network"}));
    }
    let devices: Vec<Value> = DEVICES
        .iter()
        .map(|(path, major, minor)| {
            json!({"path": path, "type": "c", "major": major, "minor": minor,
                   "fileMode": 0o666, "uid": 0, "gid": 0})
        })
        .collect();
    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    device_rules.extend(DEVICES.iter().map(|(_, major, minor)| {
        json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"})
    }));
    // Pseudo-terminals (`/dev/ptmx`, `/dev/pts/*`) for programs that open one themselves.
    device_rules.push(json!({"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"}));
    device_rules.push(json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}));

    let process = json!({
        "terminal": false,
        "user": {
            "uid": request.user.uid,
            "gid": request.user.gid,
            "additionalGids": request.user.additional_gids,
        },
        "args": request.argv,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": DEFAULT_CAPABILITIES,
            "effective": granted,
            "permitted": granted,
        },
        "rlimits": [
            {"type": "RLIMIT_NOFILE", "hard": host.nofile, "soft": host.nofile},
        ],
        "noNewPrivileges": host.no_new_privileges,
    });
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": rootfs, "readonly": false},
        "mounts": mounts.iter().map(|m| m.entry.clone()).collect::<Vec<_>>(),
        "linux": {
            "namespaces": namespaces,
            "devices": devices,
            "resources": {"devices": device_rules},
            "cgroupsPath": host.cgroups_path,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    });
    if !request.hostname.is_empty()
        && let Some(map) = config.as_object_mut()
    {
        map.insert("hostname".to_string(), json!(request.hostname));
    }
    if !host.denied_syscalls.is_empty()
        && let Some(linux) = config.get_mut("linux").and_then(Value::as_object_mut)
    {
        // Allow by default, refuse the listed calls with EPERM (errno 1), as a container
        // runtime's default profile refuses `mount` and `unshare` to a container without
        // CAP_SYS_ADMIN.
        linux.insert(
            "seccomp".to_string(),
            json!({"defaultAction": "SCMP_ACT_ALLOW",
                   "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                   "syscalls": [{"names": host.denied_syscalls,
                                 "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}),
        );
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn container_paths_are_normalised() {
        assert_eq!(
            container_path(Path::new("/a/./b/")).ok().as_deref(),
            Some("/a/b")
        );
        assert!(container_path(Path::new("a/b")).is_err());
        assert!(container_path(Path::new("/a/../b")).is_err());
        assert!(container_path(Path::new("/")).is_err());
    }

    #[test]
    fn nested_destinations_need_no_mountpoint_in_the_root() {
        let request = RunRequest {
            rootfs: PathBuf::from("/r"),
            argv: vec!["true".into()],
            env: vec![],
            cwd: PathBuf::from("/"),
            user: Default::default(),
            mounts: vec![
                RunMount::Tmpfs {
                    target: PathBuf::from("/cache"),
                    size_bytes: None,
                },
                RunMount::Tmpfs {
                    target: PathBuf::from("/cache/sub"),
                    size_bytes: Some(4096),
                },
                RunMount::Tmpfs {
                    target: PathBuf::from("/cachex"),
                    size_bytes: None,
                },
            ],
            network: RunNetwork::Host,
            hostname: "h".into(),
            timeout: None,
            tail_lines: 5,
        };
        let host = Host {
            hosts_file: Path::new("/b/hosts"),
            resolv_file: Path::new("/b/resolv.conf"),
            cgroups_path: "/x/y",
            nofile: 1024,
            no_new_privileges: true,
            denied_syscalls: &[],
        };
        let mounts = plan_mounts(&request, &host).unwrap_or_default();
        let kinds: Vec<(&str, Mountpoint)> = mounts
            .iter()
            .map(|m| (m.destination.as_str(), m.mountpoint))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("/proc", Mountpoint::Dir),
                ("/dev", Mountpoint::Dir),
                ("/dev/pts", Mountpoint::InsideEarlierMount),
                ("/dev/shm", Mountpoint::InsideEarlierMount),
                ("/dev/mqueue", Mountpoint::InsideEarlierMount),
                ("/sys", Mountpoint::Dir),
                ("/etc/hosts", Mountpoint::File),
                ("/etc/resolv.conf", Mountpoint::File),
                ("/cache", Mountpoint::Dir),
                ("/cache/sub", Mountpoint::InsideEarlierMount),
                ("/cachex", Mountpoint::Dir),
            ]
        );
    }
}
