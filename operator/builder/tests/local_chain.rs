#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The local engine's chain cache across builds: a cold build keeps each missed step's upper
//! directory as that layer's chain directory, so the first warm build unpacks nothing, and a
//! step run over such a directory sees exactly what it would see over the unpacked layer.
//!
//! Drives [`LocalBuild`] directly over a base image made here from the host's busybox, with
//! RUN under the real runc. Needs root, runc and busybox; skipped with a message otherwise.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stagecoach_builder::local::{Done, LocalBuild, PulledImage, RootCache, WorkDir};
use stagecoach_dockerfile::Dockerfile;
use stagecoach_dockerfile::planner::{self, Base, PlanOptions};
use stagecoach_oci::layer::write_layer;
use stagecoach_oci::{
    ContentStore, Digest, History, ImageConfig, ImageManifest, LayerOptions, LayerSource,
};
use stagecoach_protocol::{CacheLayout, LayerRecord};

const IMAGE: &str = "local.test/busybox";
/// Not 0, so a file older than it (made with `touch -d`) keeps its own time in a layer.
const EPOCH: u64 = 1_600_000_000;

fn log(line: &str) {
    eprintln!("{line}");
}

/// A busybox root with a few files for steps to delete and edit. Made once per test and
/// written into every cache from the same tree, so all caches share the base's digests.
fn base_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["bin", "tmp", "etc", "root", "olddir/deep"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("etc/removed"), "bye\n").unwrap();
    std::fs::write(root.join("etc/existing"), "one\n").unwrap();
    std::fs::write(root.join("olddir/deep/f"), "x\n").unwrap();
    common::install_busybox(root);
    dir
}

/// One cache directory with the base image in its store.
struct Cache {
    dir: tempfile::TempDir,
    image: PulledImage,
}

impl Cache {
    fn new(base: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let info = write_layer(
            &store,
            base,
            LayerSource::Tree,
            &LayerOptions {
                source_date_epoch: Some(EPOCH),
                ..LayerOptions::default()
            },
        )
        .unwrap();
        let mut config = ImageConfig::new_linux("amd64");
        config.push_layer(info.diff_id.clone(), History::default());
        let (bytes, desc) = config.to_blob().unwrap();
        store.put_bytes(&bytes).unwrap();
        let manifest = ImageManifest::new(desc, vec![info.descriptor()]);
        let (bytes, mdesc) = manifest.to_blob().unwrap();
        store.put_bytes(&bytes).unwrap();
        let image = PulledImage {
            reference: format!("{IMAGE}@{}", mdesc.digest),
            manifest: mdesc.digest,
            config,
            layers: vec![LayerRecord {
                media_type: info.media_type().to_string(),
                digest: info.digest.clone(),
                diff_id: info.diff_id.clone(),
                size: info.size,
            }],
        };
        Cache { dir, image }
    }

    fn chains(&self) -> PathBuf {
        self.dir.path().join("roots/chains")
    }

    /// The chain directories (name → inode): a directory made again has a new inode.
    fn chain_dirs(&self) -> BTreeMap<String, u64> {
        let Ok(read) = std::fs::read_dir(self.chains()) else {
            return BTreeMap::new();
        };
        read.map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
    }

    /// The chain ID of every layer of a finished stage, as `roots/chains/` names them.
    fn chain_ids(done: &Done) -> Vec<String> {
        let diff_ids: Vec<Digest> = done.layers.iter().map(|l| l.diff_id.clone()).collect();
        stagecoach_oci::chain_ids(&diff_ids)
            .iter()
            .map(|c| c.hex().to_string())
            .collect()
    }

    /// Builds the last stage of `dockerfile` with `context`; returns every stage.
    fn build(&self, dockerfile: &str, context: &Path, args: &[(&str, &str)]) -> Vec<Done> {
        let parsed = Dockerfile::parse(dockerfile).unwrap();
        let build_args: BTreeMap<String, String> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plan = planner::plan(
            &parsed,
            &PlanOptions {
                build_args: build_args.clone(),
                ..PlanOptions::default()
            },
        )
        .unwrap();
        let mut pulled = BTreeMap::new();
        for stage in &plan.stages {
            if let Base::Image(name) = &stage.base {
                pulled.insert(name.clone(), self.image.clone());
            }
        }
        let layout = CacheLayout::new(self.dir.path());
        let store = ContentStore::open(self.dir.path()).unwrap();
        let roots = RootCache::open(&layout, log).unwrap();
        let run = LocalBuild {
            dockerfile_text: dockerfile,
            dockerfile_path: None,
            dockerfile: &parsed,
            plan: &plan,
            layout: &layout,
            store: &store,
            context,
            pulled: &pulled,
            roots: &roots,
            build_args,
            no_cache: false,
            secrets: &[],
            source_date_epoch: EPOCH,
            log,
        };
        let work = WorkDir::create(&layout.work(), log).unwrap();
        let done = run.run_waves(&work).unwrap();
        done.into_values().collect()
    }
}

/// What names a stage's image: its config and its layers.
fn image_of(done: &Done) -> (Digest, Vec<Digest>) {
    (
        done.config_digest.clone(),
        done.layers.iter().map(|l| l.digest.clone()).collect(),
    )
}

/// Many files, then deletions and a directory made again (an opaque directory).
const MANY_FILES: &str = "FROM local.test/busybox\n\
RUN mkdir /data && cd /data && for i in $(seq 1 300); do echo $i > f$i; done\n\
RUN echo two > /data/two && rm /etc/removed \
 && rm -r /olddir && mkdir -p /olddir/deep && echo n > /olddir/deep/n\n";

#[test]
fn a_cold_build_keeps_its_layers_as_chains_and_the_first_warm_build_unpacks_none() {
    if !common::available(
        "a_cold_build_keeps_its_layers_as_chains_and_the_first_warm_build_unpacks_none",
        "runc, overlay mounts",
    ) {
        return;
    }
    let base = base_tree();
    let context = tempfile::tempdir().unwrap();
    let cache = Cache::new(base.path());
    let cold = cache.build(MANY_FILES, context.path(), &[]);
    let chain_ids = Cache::chain_ids(&cold[0]);
    let made = cache.chain_dirs();
    for id in &chain_ids[1..] {
        assert!(
            made.contains_key(id),
            "the cold build kept no chain directory for chain {id}: {made:?}"
        );
    }
    let warm = cache.build(MANY_FILES, context.path(), &[]);
    assert_eq!(image_of(&warm[0]), image_of(&cold[0]), "same image");
    assert_eq!(
        cache.chain_dirs(),
        made,
        "the warm build made (unpacked) chain directories again"
    );
    // The promoted directory holds the layer as unpacking gives it: the layer's clamped
    // times, and the file the step made.
    let first = cache.chains().join(&chain_ids[1]);
    let f = std::fs::symlink_metadata(first.join("data/f7")).unwrap();
    assert_eq!((f.mtime(), f.mtime_nsec()), (EPOCH as i64, 0));
    assert_eq!(
        std::fs::read_to_string(first.join("data/f7")).unwrap(),
        "7\n"
    );
}

/// A first step with RUN mounts (stubs the runtime makes and removes), deletions of a file
/// and of a directory (whiteouts), links, a set-uid bit, an old mtime and an edit of a base
/// file; then a step that records what it sees of them.
const OBSERVED: &str = "FROM local.test/busybox\n\
RUN --mount=type=cache,target=/cache --mount=type=bind,source=in.txt,target=/mnt/in/in.txt \
 mkdir -p /data/sub && cp /mnt/in/in.txt /data/in && echo c > /cache/c \
 && for i in $(seq 1 20); do echo $i > /data/sub/f$i; done \
 && rm /etc/removed && rm -r /olddir && ln -s in /data/link && ln /data/in /data/hard \
 && chmod 4755 /data/in && echo old > /data/old && touch -d '2001-01-01 00:00:00' /data/old \
 && echo two >> /etc/existing\n\
ARG MARKER=0\n\
RUN find /data /etc/existing /olddir /etc/removed 2>/dev/null | sort \
 | xargs stat -c '%n %f %u %g %s %Y %h' > /listing; echo $MARKER > /marker\n";

#[test]
fn a_step_over_a_kept_chain_sees_what_it_sees_over_the_unpacked_layer() {
    if !common::available(
        "a_step_over_a_kept_chain_sees_what_it_sees_over_the_unpacked_layer",
        "runc, overlay mounts",
    ) {
        return;
    }
    let base = base_tree();
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("in.txt"), "input\n").unwrap();

    // Cache A: the second build's first step is a hit stacked from the directory the cold
    // build kept.
    let kept = Cache::new(base.path());
    let cold = kept.build(OBSERVED, context.path(), &[("MARKER", "1")]);
    let first_chain = Cache::chain_ids(&cold[0])[1].clone();
    assert!(
        kept.chain_dirs().contains_key(&first_chain),
        "the step with RUN mounts and deletions was not kept as a chain directory"
    );
    let over_kept = kept.build(OBSERVED, context.path(), &[("MARKER", "2")]);
    assert_eq!(
        over_kept[0].layers[1], cold[0].layers[1],
        "the first step hit"
    );

    // Cache B: the same, but the chain directories are gone before the second build, so
    // its hit unpacks the layer (the way every first warm build did before).
    let unpacked = Cache::new(base.path());
    let cold_b = unpacked.build(OBSERVED, context.path(), &[("MARKER", "1")]);
    assert_eq!(image_of(&cold_b[0]), image_of(&cold[0]));
    std::fs::remove_dir_all(unpacked.chains()).unwrap();
    let over_unpacked = unpacked.build(OBSERVED, context.path(), &[("MARKER", "2")]);

    assert_ne!(
        over_kept[0].layers[2], cold[0].layers[2],
        "the second step ran again"
    );
    assert_eq!(
        image_of(&over_kept[0]),
        image_of(&over_unpacked[0]),
        "a step over the kept chain and over the unpacked layer made different layers"
    );
}

const PARENT_AND_CHILD: &str = "FROM local.test/busybox AS parent\n\
RUN echo p > /p\n\
FROM parent\n\
RUN echo c > /c\n";

#[test]
fn a_child_stage_goes_on_from_its_parents_kept_chain() {
    if !common::available(
        "a_child_stage_goes_on_from_its_parents_kept_chain",
        "runc, overlay mounts",
    ) {
        return;
    }
    let base = base_tree();
    let context = tempfile::tempdir().unwrap();
    let cache = Cache::new(base.path());
    let cold = cache.build(PARENT_AND_CHILD, context.path(), &[]);
    let child = cold.last().unwrap();
    assert_eq!(child.layers.len(), 3);
    let made = cache.chain_dirs();
    for id in &Cache::chain_ids(child)[1..] {
        assert!(made.contains_key(id), "no chain directory {id}: {made:?}");
    }
    assert!(child.chain.is_some(), "the child's root is exactly a chain");
    let warm = cache.build(PARENT_AND_CHILD, context.path(), &[]);
    assert_eq!(image_of(warm.last().unwrap()), image_of(child));
    assert_eq!(cache.chain_dirs(), made);
}
