//! The OCI runtime configuration (`config.json`) for one RUN step: what a Docker `RUN` gets
//! by default (capabilities, namespaces, `/proc`, `/dev`, `/sys`, masked paths), narrowed to
//! what this machine allows (no systemd, hybrid cgroups v1, `RLIMIT_NOFILE` capped by the
//! host's hard limit), plus the request's own mounts. Pure: the caller decides where files
//! live and writes the JSON. Typed with `oci-spec`'s runtime types; its builders fill every
//! field not given from its own default configuration, so every field this file does not
//! set is cleared explicitly (a golden test pins the whole document).

use std::collections::HashSet;
use std::path::{Component, Path};

use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};

use super::RuncError;
use crate::runner::{RunMount, RunNetwork, RunRequest};

/// The capabilities Docker gives a container (and so a `RUN` step) by default.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
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
    pub entry: Mount,
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
    let standard: [(&str, &str, &str, &[&str]); 6] = [
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        (
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        (
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        (
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ];
    let mut raw: Vec<(String, Mount, bool)> = Vec::new();
    for (destination, typ, source, options) in standard {
        raw.push((
            destination.into(),
            mount(destination, typ, source, options)?,
            false,
        ));
    }
    for (destination, file) in [
        ("/etc/hosts", host.hosts_file),
        ("/etc/resolv.conf", host.resolv_file),
    ] {
        let entry = mount(destination, "bind", &path_str(file)?, &["rbind", "rw"])?;
        raw.push((destination.into(), entry, true));
    }
    for requested in &request.mounts {
        match requested {
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
                let entry = mount(&destination, "bind", &path_str(source)?, &["rbind", access])?;
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
                let options: Vec<&str> = options.iter().map(String::as_str).collect();
                let entry = mount(&destination, "tmpfs", "tmpfs", &options)?;
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

fn spec_err(e: oci_spec::OciSpecError) -> RuncError {
    RuncError::Invalid(format!("building config.json: {e}"))
}

/// One mount entry.
fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, RuncError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// The whole `config.json`.
pub(super) fn config(
    request: &RunRequest,
    rootfs: &Path,
    cwd: &str,
    env: &[String],
    mounts: &[PlannedMount],
    host: &Host<'_>,
) -> Result<Spec, RuncError> {
    let rootfs = rootfs
        .to_str()
        .ok_or_else(|| RuncError::Invalid(format!("{} is not valid UTF-8", rootfs.display())))?;
    // A non-root process loses its permitted and effective capabilities at execve anyway
    // (no file capabilities, no ambient set), so giving them only to root says the same
    // thing honestly; the bounding set still limits what setuid programs can regain.
    let bounding: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let granted: HashSet<Capability> = if request.user.uid == 0 {
        bounding.clone()
    } else {
        HashSet::new()
    };
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(bounding)
        .effective(granted.clone())
        .permitted(granted)
        .build()
        .map_err(spec_err)?;
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    let user = UserBuilder::default()
        .uid(request.user.uid)
        .gid(request.user.gid)
        .additional_gids(request.user.additional_gids.clone())
        .build()
        .map_err(spec_err)?;
    let rlimit = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(host.nofile)
        .soft(host.nofile)
        .build()
        .map_err(spec_err)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(request.argv.clone())
        .env(env.to_vec())
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![rlimit])
        .no_new_privileges(host.no_new_privileges)
        .build()
        .map_err(spec_err)?;

    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if request.network == RunNetwork::None {
        // A new network namespace holds only `lo`, which runc brings up.
        kinds.push(LinuxNamespaceType::Network);
    }
    let namespaces = kinds
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_err)?;
    let devices = DEVICES
        .iter()
        .map(|(path, major, minor)| {
            LinuxDeviceBuilder::default()
                .path(*path)
                .typ(LinuxDeviceType::C)
                .major(*major)
                .minor(*minor)
                .file_mode(0o666u32)
                .uid(0u32)
                .gid(0u32)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_err)?;
    let rule = |allow: bool, major: Option<i64>, minor: Option<i64>| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .access("rwm");
        if allow {
            b = b.typ(LinuxDeviceType::C);
        }
        if let Some(major) = major {
            b = b.major(major);
        }
        if let Some(minor) = minor {
            b = b.minor(minor);
        }
        b.build()
    };
    let mut device_rules = vec![rule(false, None, None)];
    device_rules.extend(
        DEVICES
            .iter()
            .map(|(_, major, minor)| rule(true, Some(*major), Some(*minor))),
    );
    // Pseudo-terminals (`/dev/ptmx`, `/dev/pts/*`) for programs that open one themselves.
    device_rules.push(rule(true, Some(5), Some(2)));
    device_rules.push(rule(true, Some(136), None));
    let device_rules = device_rules
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_err)?;
    let resources = LinuxResourcesBuilder::default()
        .devices(device_rules)
        .build()
        .map_err(spec_err)?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(devices)
        .resources(resources)
        .cgroups_path(host.cgroups_path)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(spec_err)?;
    if !host.denied_syscalls.is_empty() {
        // Allow by default, refuse the listed calls with EPERM (errno 1), as a container
        // runtime's default profile refuses `mount` and `unshare` to a container without
        // CAP_SYS_ADMIN.
        let refused = LinuxSyscallBuilder::default()
            .names(host.denied_syscalls.to_vec())
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(1u32)
            .build()
            .map_err(spec_err)?;
        let seccomp = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32,
            ])
            .syscalls(vec![refused])
            .build()
            .map_err(spec_err)?;
        linux.set_seccomp(Some(seccomp));
    }
    let root = RootBuilder::default()
        .path(rootfs)
        .readonly(false)
        .build()
        .map_err(spec_err)?;
    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts.iter().map(|m| m.entry.clone()).collect()));
    spec.set_process(Some(process));
    spec.set_linux(Some(linux));
    spec.set_annotations(None);
    spec.set_hostname((!request.hostname.is_empty()).then(|| request.hostname.clone()));
    Ok(spec)
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

#[cfg(test)]
mod golden {
    use super::*;
    use crate::users::ProcessUser;
    use serde_json::Value;
    use std::path::PathBuf;

    pub(super) fn requests() -> Vec<(&'static str, RunRequest, Vec<String>, bool)> {
        let root = RunRequest {
            rootfs: PathBuf::from("/r"),
            argv: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: PathBuf::from("/src"),
            user: ProcessUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![1, 2],
            },
            mounts: vec![
                RunMount::Tmpfs {
                    target: PathBuf::from("/tmp/t"),
                    size_bytes: Some(65536),
                },
                RunMount::Bind {
                    source: PathBuf::from("/"),
                    target: PathBuf::from("/mnt/host"),
                    readonly: true,
                },
            ],
            network: RunNetwork::Host,
            hostname: "stagecoach".into(),
            timeout: None,
            tail_lines: 5,
        };
        let user = RunRequest {
            user: ProcessUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![],
            },
            network: RunNetwork::None,
            hostname: String::new(),
            mounts: vec![],
            ..root.clone()
        };
        vec![
            ("root", root, vec![], true),
            (
                "user",
                user,
                vec!["mount".to_string(), "unshare".to_string()],
                false,
            ),
        ]
    }

    pub(super) fn render(request: &RunRequest, denied: &[String], nnp: bool) -> Value {
        let host = Host {
            hosts_file: Path::new("/b/hosts"),
            resolv_file: Path::new("/b/resolv.conf"),
            cgroups_path: "/stagecoach/x",
            nofile: 4096,
            no_new_privileges: nnp,
            denied_syscalls: denied,
        };
        let mounts = plan_mounts(request, &host).unwrap();
        let env: Vec<String> = request
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        serde_json::to_value(
            config(request, Path::new("/r"), "/src", &env, &mounts, &host).unwrap(),
        )
        .unwrap()
    }

    /// Capability sets are sets: their order in the JSON means nothing.
    fn normalized(mut v: Value) -> Value {
        if let Some(caps) = v
            .pointer_mut("/process/capabilities")
            .and_then(Value::as_object_mut)
        {
            for set in caps.values_mut() {
                if let Some(list) = set.as_array_mut() {
                    list.sort_by_key(|c| c.as_str().unwrap_or_default().to_string());
                }
            }
        }
        v
    }

    #[test]
    fn config_json_is_pinned() {
        for (name, request, denied, nnp) in requests() {
            let path = format!(
                "{}/src/runc/testdata/config-{name}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let want: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let got = render(&request, &denied, nnp);
            assert_eq!(
                normalized(got),
                normalized(want),
                "{name}: config.json differs from {path}"
            );
        }
    }
}
