//! RUN mounts: resolving each `--mount` to what the runner binds (cache directories under
//! `mounts/`, context or stage sources, tmpfs, secrets), the stubs a mount target needs in
//! the root and their removal, throw-away copies for read-write binds, the check that a
//! runner which cannot mount finds every target mounted, and the locks of shared caches.
use super::*;
use crate::placeholders::{self, Destination, Placeholders};
use crate::run_mounts::{self, MountNeed, MountPlanError};

impl StageExecutor<'_> {
    pub(super) fn prepare_mount(
        &self,
        m: &stagecoach_dockerfile::instructions::Mount,
        cwd: &str,
        line: usize,
        env: &mut Vec<(String, String)>,
    ) -> Result<PreparedMount, ExecutorError> {
        // The target, id and default rules are the mount plan's (run_mounts), so a pod's
        // volumes and this step agree on them.
        let need = run_mounts::mount_need(m, cwd, line).map_err(|e| match e {
            MountPlanError::Unsupported { line, what } => ExecutorError::Unsupported { line, what },
            MountPlanError::State { line, source } => ExecutorError::State { line, source },
        })?;
        match need {
            MountNeed::Cache {
                id,
                target,
                readonly,
                sharing,
            } => {
                let mounts = self.layout.mounts();
                let dir = self.layout.mount(&id);
                if fs::symlink_metadata(&dir).is_err() {
                    fs::create_dir_all(&mounts).map_err(io_err("create", &mounts))?;
                    let mut b = fs::DirBuilder::new();
                    b.mode(m.mode.unwrap_or(0o755));
                    match b.create(&dir) {
                        Ok(()) => {
                            if self.options.set_owner {
                                rustix::fs::chown(
                                    &dir,
                                    Some(rustix::fs::Uid::from_raw(m.uid.unwrap_or(0))),
                                    Some(rustix::fs::Gid::from_raw(m.gid.unwrap_or(0))),
                                )
                                .map_err(|e| io_err("chown", &dir)(e.into()))?;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_err("create", &dir)(e)),
                    }
                }
                // Its last use, for garbage collection's age and LRU order.
                crate::gc::touch(&dir);
                // `locked` and `private` both serialise writers here: private copies are
                // not implemented, and a lock gives the same isolation at the cost of waiting.
                let lock = matches!(sharing, Sharing::Locked | Sharing::Private)
                    .then(|| self.layout.mount_lock(&id));
                Ok(PreparedMount {
                    kind: "cache",
                    mount: Some(RunMount::Bind {
                        source: dir,
                        target: PathBuf::from(&target),
                        readonly,
                    }),
                    target: Some(target),
                    stub: StubKind::Dir,
                    key_input: None,
                    lock,
                    rw_copy: None,
                })
            }
            MountNeed::Bind {
                from,
                source,
                target,
                readonly,
            } => {
                let (root, input_name) = match &from {
                    None => (self.context.root().to_owned(), format!("mount:{target}")),
                    Some(from) => (
                        self.stage_source(from, line)?.root.clone(),
                        format!("mount:{target}"),
                    ),
                };
                let resolved = rootpath::resolve(&root, &source, true)?;
                let meta =
                    fs::metadata(&resolved.path).map_err(io_err("inspect", &resolved.path))?;
                let ctx = BuildContext::with_patterns(&root, &[] as &[&str])?;
                let digest = cache_key::digest_source(&ctx, &source)?;
                Ok(PreparedMount {
                    kind: "bind",
                    mount: Some(RunMount::Bind {
                        source: resolved.path,
                        target: PathBuf::from(&target),
                        readonly,
                    }),
                    target: Some(target),
                    stub: if meta.is_dir() {
                        StubKind::Dir
                    } else {
                        StubKind::File
                    },
                    key_input: Some((input_name, digest)),
                    lock: None,
                    // Writes to a read-write bind mount are thrown away (BuildKit's rule), so
                    // the process gets a copy, made only when the step really runs.
                    rw_copy: (!readonly).then(|| RwCopy {
                        root,
                        source,
                        is_dir: meta.is_dir(),
                    }),
                })
            }
            MountNeed::Tmpfs { target, size_bytes } => Ok(PreparedMount {
                kind: "tmpfs",
                mount: Some(RunMount::Tmpfs {
                    target: PathBuf::from(&target),
                    size_bytes,
                }),
                target: Some(target),
                stub: StubKind::Dir,
                key_input: None,
                lock: None,
                rw_copy: None,
            }),
            MountNeed::Secret {
                id,
                target,
                env: var,
                required,
            } => {
                let Some(path) = self.secrets.get(&id) else {
                    if required {
                        return Err(ExecutorError::Missing {
                            line,
                            message: format!("secret `{id}` is required but was not provided"),
                        });
                    }
                    return Ok(PreparedMount::none());
                };
                if let Some(var) = &var {
                    let value = fs::read_to_string(path).map_err(io_err("read secret", path))?;
                    env.push((var.clone(), value));
                }
                // An `env=`-only secret has no file in the root.
                let Some(target) = target else {
                    return Ok(PreparedMount::none());
                };
                Ok(PreparedMount {
                    kind: "secret",
                    mount: Some(RunMount::Bind {
                        source: path.clone(),
                        target: PathBuf::from(&target),
                        readonly: true,
                    }),
                    target: Some(target),
                    stub: StubKind::File,
                    key_input: None,
                    lock: None,
                    rw_copy: None,
                })
            }
        }
    }
}

pub(super) static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The mount-point stub a RUN mount needs in the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StubKind {
    /// A directory, removed afterwards only while empty (what the RUN put there is output).
    Dir,
    /// A file (a file bind, a secret), removed afterwards whatever is in it: a secret's
    /// placeholder is never trusted.
    File,
}

pub(super) struct PreparedMount {
    /// The mount type as `--mount=type=` names it, for messages.
    pub(super) kind: &'static str,
    pub(super) mount: Option<RunMount>,
    pub(super) target: Option<String>,
    pub(super) stub: StubKind,
    pub(super) key_input: Option<(String, String)>,
    pub(super) lock: Option<PathBuf>,
    pub(super) rw_copy: Option<RwCopy>,
}

/// What a read-write bind mount copies before the run.
pub(super) struct RwCopy {
    pub(super) root: PathBuf,
    pub(super) source: String,
    pub(super) is_dir: bool,
}

/// Throw-away copies for read-write bind mounts, removed when dropped (also on errors).
pub(super) struct ScratchDirs(pub(super) Vec<PathBuf>);

impl Drop for ScratchDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            // Best effort: a leftover under `tmp/` of the cache root is garbage, not state.
            let _ = fs::remove_dir_all(d);
        }
    }
}

impl StageExecutor<'_> {
    /// Writes a `#!` heredoc script, executable, into a throw-away directory outside the root
    /// (removed with `scratch`), for binding at `/dev/pipes/<name>`.
    pub(super) fn write_script(
        &self,
        body: &str,
        scratch: &mut ScratchDirs,
    ) -> Result<PathBuf, ExecutorError> {
        let tmp = self.layout.tmp();
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let dir = tmp.join(format!(
            "script-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        scratch.0.push(dir.clone());
        let file = dir.join("script");
        fs::write(&file, body).map_err(io_err("write", &file))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &file))?;
        Ok(file)
    }

    /// Makes the copies read-write bind mounts need and points their mounts at them.
    pub(super) fn materialize_rw_copies(
        &self,
        prepared: &[PreparedMount],
        mounts: &mut [RunMount],
        line: usize,
    ) -> Result<ScratchDirs, ExecutorError> {
        let mut scratch = ScratchDirs(Vec::new());
        let mut index = 0;
        for p in prepared {
            if p.mount.is_none() {
                continue;
            }
            let slot = index;
            index += 1;
            let Some(rw) = &p.rw_copy else { continue };
            let tmp = self.layout.tmp();
            fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
            let dir = tmp.join(format!(
                "bind-{}-{}",
                std::process::id(),
                TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            fs::create_dir(&dir).map_err(io_err("create", &dir))?;
            scratch.0.push(dir.clone());
            let ctx = if rw.root == self.context.root() {
                self.context.clone()
            } else {
                BuildContext::with_patterns(&rw.root, &[] as &[&str])?
            };
            let dest = if rw.is_dir { "/" } else { "/file" };
            let spec = CopySpec {
                sources: vec![rw.source.clone()],
                dest: dest.to_string(),
                ..CopySpec::default()
            };
            let plan = copy::plan(&ctx, &spec, &dir)
                .map_err(|source| ExecutorError::Copy { line, source })?;
            self.apply_plan(&plan, &dir, line)?;
            if let Some(RunMount::Bind { source, .. }) = mounts.get_mut(slot) {
                *source = if rw.is_dir { dir } else { dir.join("file") };
            }
        }
        Ok(scratch)
    }
}

impl PreparedMount {
    pub(super) fn none() -> Self {
        Self {
            kind: "",
            mount: None,
            target: None,
            stub: StubKind::Dir,
            key_input: None,
            lock: None,
            rw_copy: None,
        }
    }
}

/// Makes the mount points one RUN's mounts need in the root (crate::placeholders), removed
/// after the run so a mount leaves no trace in the root, as BuildKit removes its mount stubs.
/// A secret's placeholder is a file removed whatever the process wrote into it.
pub(super) fn stubs(
    rootfs: &Path,
    mounts: &[PreparedMount],
) -> Result<Placeholders, ExecutorError> {
    let destinations: Vec<Destination> = mounts
        .iter()
        .filter(|p| p.mount.is_some())
        .filter_map(|p| {
            p.target.as_ref().map(|t| Destination {
                path: t.clone(),
                file: p.stub != StubKind::Dir,
            })
        })
        .collect();
    Ok(placeholders::prepare(rootfs, &destinations)?)
}

/// For a runner that cannot mount: every mount the step declares must already be a mount
/// point in this process's view (the pod spec provides it), or the step would write into
/// the image instead. A read-write bind is refused: without a private copy, its writes would
/// reach the shared source.
pub(super) fn check_premounted(
    rootfs: &Path,
    prepared: &[PreparedMount],
    line: usize,
) -> Result<(), ExecutorError> {
    let mountinfo = fs::read("/proc/self/mountinfo")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    let points: BTreeSet<PathBuf> = snapshot::mount_points(&mountinfo).into_iter().collect();
    for p in prepared {
        let (Some(_), Some(target)) = (&p.mount, &p.target) else {
            continue;
        };
        if p.rw_copy.is_some() {
            return Err(ExecutorError::Unsupported {
                line,
                what: "RUN --mount=type=bind,rw in a builder pod (its writes would reach the shared source)".into(),
            });
        }
        let resolved = rootpath::resolve(rootfs, target, true)?.path;
        if !points.contains(&resolved) {
            return Err(ExecutorError::MountMissing {
                line,
                kind: p.kind,
                target: target.clone(),
            });
        }
    }
    Ok(())
}

/// Holds an exclusive lock on a file until dropped.
pub(super) fn lock_file(path: &Path) -> Result<fs::File, ExecutorError> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("open lock", path))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("lock", path)(e.into()))?;
    Ok(f)
}
