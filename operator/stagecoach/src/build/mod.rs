//! `stagecoach build`: the whole engine on one machine. It plans the Dockerfile, pulls every
//! base image the needed stages use, then hands the plan to `stagecoach_builder::local`,
//! which runs each stage as a stage job (the wiring builder pods use) over its own root, with
//! RUN steps under runc. The targets' images are assembled from the stages' results and
//! written as an OCI layout, pushed, or both.
//!
//! Contract (docs/cli.md): progress goes to standard error, one line per event, prefixed with
//! the stage; standard output gets one line per target, `<target> <digest> <size>`. The same
//! inputs give the same digests (timestamps come from `SOURCE_DATE_EPOCH`, default 0). Stage
//! roots live in a work directory under the cache directory that is removed when the build
//! ends, successful or not; layers and cache keys stay in the cache for the next build.

pub(crate) mod pull;

use std::path::PathBuf;

use stagecoach_builder::local::{Done, LocalBuild, LocalError, RootCache, WorkDir};
use stagecoach_dockerfile::Dockerfile;
use stagecoach_dockerfile::planner::{self, Base, PlanOptions};
use stagecoach_oci::layout::OciLayoutWriter;
use stagecoach_oci::registry::ImageRef;
use stagecoach_oci::{ContentStore, Descriptor, ImageManifest};
use stagecoach_protocol::CacheLayout;

use crate::plan::{DockerfileArgs, parse_build_args};

/// Arguments of `stagecoach build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    dockerfile: DockerfileArgs,
    /// Where `--push` pushes the image (repeatable; one target only).
    #[arg(long = "tag", short = 't', value_name = "REF")]
    tags: Vec<String>,
    /// Push the image to every `--tag`.
    #[arg(long)]
    push: bool,
    /// Write the targets' images as an OCI image layout: `oci:DIR`.
    #[arg(long, value_name = "oci:DIR")]
    output: Option<String>,
    /// Run every step, looking nothing up in the cache (results are still recorded).
    #[arg(long)]
    no_cache: bool,
    /// The cache: content store, instruction cache, cache mounts and the work directory.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// A registry (HOST or HOST:PORT) spoken to over plain HTTP (loopback ones always are).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// A secret for `RUN --mount=type=secret`: `id=ID,src=PATH` (repeatable). Its file is
    /// mounted only into the RUN steps that ask for it and never reaches a layer or a log.
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    secrets: Vec<String>,
    /// The build context directory.
    #[arg(value_name = "CONTEXT")]
    context: PathBuf,
}

/// Why `stagecoach build` failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The command line contradicts itself.
    #[error("{0}")]
    Usage(String),
    /// The Dockerfile could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The Dockerfile is invalid or the targets cannot be planned.
    #[error("{path}: {source}")]
    Plan {
        /// The Dockerfile path.
        path: String,
        /// The cause.
        source: planner::PlanError,
    },
    /// The build context cannot be used.
    #[error(transparent)]
    Context(#[from] stagecoach_builder::context::ContextError),
    /// A base image could not be pulled.
    #[error("pull {image}: {message}")]
    Pull {
        /// The image as the Dockerfile names it.
        image: String,
        /// What went wrong.
        message: String,
    },
    /// A stage failed (its message names the instruction and line) or its root could not
    /// be made.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] stagecoach_oci::store::StoreError),
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The image could not be assembled or written.
    #[error("output {target}: {message}")]
    Output {
        /// Where to.
        target: String,
        /// What went wrong.
        message: String,
    },
    /// The image could not be pushed.
    #[error("push {reference}: {message}")]
    Push {
        /// The tag.
        reference: String,
        /// What went wrong.
        message: String,
    },
}

impl BuildError {
    /// The process exit code: 2 for bad usage, 1 for a build that could not be done.
    pub fn exit_code(&self) -> u8 {
        match self {
            BuildError::Usage(_) | BuildError::Read { .. } => 2,
            _ => 1,
        }
    }
}

/// Where `--output` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    OciLayout(PathBuf),
}

fn parse_output(raw: &str) -> Result<Output, BuildError> {
    match raw.split_once(':') {
        Some(("oci", dir)) if !dir.is_empty() => Ok(Output::OciLayout(PathBuf::from(dir))),
        _ => Err(BuildError::Usage(format!(
            "--output {raw:?}: expected oci:DIR (an OCI image layout directory)"
        ))),
    }
}

/// Parses `--secret id=ID,src=PATH` (`source=` and `type=file` are accepted too, as docker
/// does). The file must exist now, so a typo fails before anything runs.
fn parse_secret(raw: &str) -> Result<(String, PathBuf), BuildError> {
    let bad = |why: &str| BuildError::Usage(format!("--secret {raw:?}: {why}"));
    let (mut id, mut src) = (None, None);
    for part in raw.split(',') {
        match part.split_once('=') {
            Some(("id", v)) if !v.is_empty() => id = Some(v.to_string()),
            Some(("src" | "source", v)) if !v.is_empty() => src = Some(PathBuf::from(v)),
            Some(("type", "file")) => {}
            _ => return Err(bad("expected id=ID,src=PATH")),
        }
    }
    let id = id.ok_or_else(|| bad("no id="))?;
    let src = src.ok_or_else(|| bad("no src="))?;
    if !src.is_file() {
        return Err(bad(&format!("{} is not a readable file", src.display())));
    }
    Ok((id, src))
}

/// The default cache: `$XDG_CACHE_HOME/stagecoach/build`, else `~/.cache/stagecoach/build`.
fn default_cache_dir() -> Result<PathBuf, BuildError> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .ok_or_else(|| {
            BuildError::Usage("neither XDG_CACHE_HOME nor HOME is set: give --cache-dir".into())
        })?;
    Ok(base.join("stagecoach").join("build"))
}

fn source_date_epoch() -> Result<u64, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse().map_err(|_| {
            BuildError::Usage(format!(
                "SOURCE_DATE_EPOCH={v:?}: expected seconds since 1970 as a whole number"
            ))
        }),
        _ => Ok(0),
    }
}

/// One line of progress on standard error. Lines of parallel stages interleave whole.
fn log(line: String) {
    progress(&line);
}

fn progress(line: &str) {
    crate::logging::line(line);
}

/// Runs `stagecoach build`.
pub fn run(args: &BuildArgs) -> Result<(), BuildError> {
    let started = std::time::Instant::now();
    let output = args.output.as_deref().map(parse_output).transpose()?;
    if args.push && args.tags.is_empty() {
        return Err(BuildError::Usage("--push needs at least one --tag".into()));
    }
    let secrets = args
        .secrets
        .iter()
        .map(|s| parse_secret(s))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = args
        .tags
        .iter()
        .map(|t| ImageRef::parse(t).map_err(|e| BuildError::Usage(format!("--tag {t:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;

    let dockerfile_path = args.dockerfile.path(&args.context);
    let (text, shown) = args.dockerfile.read(&args.context).map_err(|e| match e {
        crate::plan::PlanError::Read { path, source } => BuildError::Read { path, source },
        other => BuildError::Usage(other.to_string()),
    })?;
    let plan_err = |source| BuildError::Plan {
        path: shown.clone(),
        source,
    };
    let build_args = parse_build_args(&args.dockerfile.build_args)
        .map_err(|e| BuildError::Usage(e.to_string()))?;
    let options = PlanOptions {
        targets: args.dockerfile.targets.clone(),
        build_args: build_args.clone(),
        ..PlanOptions::default()
    };
    let dockerfile = Dockerfile::parse(&text).map_err(|e| plan_err(e.into()))?;
    let plan = planner::plan(&dockerfile, &options).map_err(plan_err)?;
    // Evaluated here only to fail before any pull; each stage job evaluates them again.
    planner::global_env(&dockerfile, &options).map_err(plan_err)?;
    for warning in &plan.warnings {
        log(format!("warning: {warning}"));
    }
    if plan.targets.len() > 1 && !tags.is_empty() {
        return Err(BuildError::Usage(
            "--tag names one image: build one --target at a time to tag it".into(),
        ));
    }
    let needs_root = plan.waves.iter().flatten().any(|&i| {
        dockerfile.stages[i].instructions.iter().any(|l| {
            matches!(
                l.instruction,
                stagecoach_dockerfile::instructions::Instruction::Run(_)
            )
        })
    });
    if needs_root && !rustix::process::geteuid().is_root() {
        return Err(BuildError::Usage(
            "stagecoach build runs RUN steps under runc and needs root".into(),
        ));
    }

    let cache_dir = match &args.cache_dir {
        Some(dir) => dir.clone(),
        None => default_cache_dir()?,
    };
    std::fs::create_dir_all(&cache_dir).map_err(|source| BuildError::Io {
        action: "create the cache directory",
        path: cache_dir.display().to_string(),
        source,
    })?;
    let layout = CacheLayout::new(&cache_dir);
    let store = ContentStore::open(&cache_dir)?;
    let dockerfile_path = if dockerfile_path.as_os_str() == "-" {
        None
    } else {
        // Checked now, so a context that cannot be read fails before any pull.
        stagecoach_builder::context::BuildContext::open_for(&args.context, &dockerfile_path)?;
        Some(
            std::path::absolute(&dockerfile_path).map_err(|source| BuildError::Io {
                action: "resolve",
                path: dockerfile_path.display().to_string(),
                source,
            })?,
        )
    };

    // Every image the needed stages read, pulled before anything runs.
    let mut images: Vec<String> = Vec::new();
    for &i in plan.waves.iter().flatten() {
        let stage = &plan.stages[i];
        if let Base::Image(image) = &stage.base {
            images.push(image.clone());
        }
        images.extend(stage.images.iter().cloned());
    }
    images.sort();
    images.dedup();
    let rt = pull::runtime()?;
    let client = pull::client(&args.insecure_registries)?;
    let (pulled, pinned) = pull::pull_all(&rt, &client, &store, &images, &log)?;

    let roots = RootCache::open(&layout, progress)?;
    let run = LocalBuild {
        dockerfile_text: &text,
        dockerfile_path,
        dockerfile: &dockerfile,
        plan: &plan,
        layout: &layout,
        store: &store,
        context: &args.context,
        pulled: &pulled,
        roots: &roots,
        build_args,
        no_cache: args.no_cache,
        secrets: &secrets,
        source_date_epoch: source_date_epoch()?,
        log: progress,
    };
    let work = WorkDir::create(&layout.work(), progress)?;
    let done = run.run_waves(&work)?;

    // Assemble each target's image.
    let mut built = Vec::new();
    for &t in &plan.targets {
        let stage = done.get(&t).ok_or_else(|| BuildError::Output {
            target: plan.stages[t].label(),
            message: "the stage did not run".into(),
        })?;
        let (manifest, size) = assemble(&store, stage)?;
        built.push((plan.stages[t].label(), manifest, size));
    }
    drop(work);

    if let Some(Output::OciLayout(dir)) = &output {
        let out_err = |e: stagecoach_oci::layout::LayoutError| BuildError::Output {
            target: format!("oci:{}", dir.display()),
            message: e.to_string(),
        };
        let mut writer = OciLayoutWriter::create(dir).map_err(out_err)?;
        for (label, manifest, _) in &built {
            writer
                .add_image(&store, manifest, Some(label))
                .map_err(out_err)?;
        }
        writer.finish().map_err(out_err)?;
        log(format!("[output] wrote oci:{}", dir.display()));
    }
    if args.push {
        let mount_from: Vec<ImageRef> = pinned;
        for (label, manifest, _) in &built {
            for tag in &tags {
                let pushed = rt
                    .block_on(client.push_image(&store, tag, manifest, &mount_from))
                    .map_err(|e| BuildError::Push {
                        reference: tag.to_string(),
                        message: e.to_string(),
                    })?;
                log(format!("[push] {label} → {tag}@{}", pushed.digest));
            }
        }
    }
    if output.is_none() && !args.push {
        log("[output] the image stays in the cache; give --output oci:DIR or --push".into());
    }
    for (label, manifest, size) in &built {
        println!("{label} {} {size}", manifest.digest);
    }
    log(format!(
        "[build] done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Writes the image manifest of a finished stage into the store; returns its descriptor and
/// the image's size (manifest, config and layers).
fn assemble(store: &ContentStore, stage: &Done) -> Result<(Descriptor, u64), BuildError> {
    let output_err = |message: String| BuildError::Output {
        target: stage.label.clone(),
        message,
    };
    let (config_bytes, config_desc) = stage
        .config
        .to_blob()
        .map_err(|e| output_err(e.to_string()))?;
    store.put_bytes(&config_bytes)?;
    let mut layers = Vec::with_capacity(stage.layers.len());
    for layer in &stage.layers {
        layers.push(Descriptor::from(layer));
    }
    let manifest = ImageManifest::new(config_desc.clone(), layers);
    let (bytes, desc) = manifest.to_blob().map_err(|e| output_err(e.to_string()))?;
    store.put_bytes(&bytes)?;
    let size = desc.size + config_desc.size + stage.layers.iter().map(|l| l.size).sum::<u64>();
    Ok((desc, size))
}
