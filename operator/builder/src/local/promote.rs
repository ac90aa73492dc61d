//! Whether the upper directory a missed step wrote over an exact chain can become that
//! layer's chain directory, and the one normalization that makes it so.
//!
//! A chain directory must show exactly what unpacking its layer over the chain below shows
//! ([`super::roots`]); every build that reaches the chain ID stacks it. The step's upper
//! directory holds the step's changes in overlay's own format, but not only those: runtime
//! leftovers the snapshot left out (mount stubs and the directories copied up to hold them,
//! anything under `/dev`, `/proc`, `/sys` or an excluded path), entries the layer cannot
//! carry (sockets, xattrs the writer drops as host-specific) and real mtimes where the layer
//! clamps them to SOURCE_DATE_EPOCH in whole seconds. [`check`] reads the upper against the
//! change list the layer was written from and refuses anything it cannot prove equal; what it
//! accepts differs from the unpacked layer only in times, which [`normalize`] sets to the
//! layer's. Refusing is always safe: the stage then goes on as it did before promotion.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
use stagecoach_oci::Change;

use crate::executor::MissedStep;

/// Largest mtime a tar header holds (12 octal digits), as the layer writer caps it.
const MAX_TAR_MTIME: u64 = 0o77_777_777_777;

/// Why an upper directory is not promoted. The reasons are stable words for log lines.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The change list has an entry kind the check does not model.
    #[error("a whole-tree change ({})", .0.display())]
    TreeChange(PathBuf),
    /// An entry the layer does not carry and that is not a copied-up directory.
    #[error("a leftover the layer leaves out ({})", .0.display())]
    Leftover(PathBuf),
    /// A directory under a path the snapshot did not walk.
    #[error("an entry under a path the snapshot leaves out ({})", .0.display())]
    Unwalked(PathBuf),
    /// A whiteout the layer has no deletion for.
    #[error("a whiteout the layer does not record ({})", .0.display())]
    Whiteout(PathBuf),
    /// An opaque directory where the layer has none, or none where it has one.
    #[error("an opaque directory that does not match the layer ({})", .0.display())]
    Opaque(PathBuf),
    /// A socket: the layer writer skips them.
    #[error("a socket ({})", .0.display())]
    Socket(PathBuf),
    /// An xattr the layer writer does not record.
    #[error("an xattr the layer does not carry ({}: {name})", .path.display())]
    Xattr {
        /// The entry.
        path: PathBuf,
        /// The xattr's name.
        name: String,
    },
    /// Overlay bookkeeping that changes what a lower shows (redirect, metacopy, …).
    #[error("overlay metadata a lower layer would act on ({}: {name})", .path.display())]
    OverlayXattr {
        /// The entry.
        path: PathBuf,
        /// The xattr's name.
        name: String,
    },
    /// A path the layer writes is not in the upper directory.
    #[error("the layer writes {} but the upper directory lacks it", .0.display())]
    Missing(PathBuf),
    /// Reading the upper directory failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The entries whose times [`normalize`] sets, with the time the layer gives them.
#[derive(Debug, Default)]
pub struct Normalization {
    entries: Vec<(PathBuf, i64)>,
}

impl Normalization {
    /// How many entries it touches.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it touches none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the layer of `step` holds, by path: the mirror of the layer writer's
/// `collect_changes`, which also writes every parent of what it writes or whites out.
struct Expected {
    /// Written entries (their own paths and their parents).
    entries: HashSet<PathBuf>,
    /// Directories written with everything below them and an opaque marker.
    opaque: HashSet<PathBuf>,
    /// Whiteouts.
    whiteouts: HashSet<PathBuf>,
}

impl Expected {
    fn of(changes: &[Change]) -> Result<Self, Refusal> {
        let mut entries = HashSet::new();
        let mut opaque = HashSet::new();
        let mut deleted = Vec::new();
        for change in changes {
            match change {
                Change::Write(p) => {
                    entries.insert(p.clone());
                }
                Change::Opaque(p) => {
                    opaque.insert(p.clone());
                    entries.insert(p.clone());
                }
                Change::Delete(p) => deleted.push(p.clone()),
                Change::WriteTree(p) => return Err(Refusal::TreeChange(p.clone())),
            }
        }
        let hidden: HashSet<&PathBuf> = deleted.iter().chain(opaque.iter()).collect();
        let whiteouts: HashSet<PathBuf> = deleted
            .iter()
            .filter(|p| {
                !p.ancestors()
                    .skip(1)
                    .any(|a| hidden.contains(&a.to_path_buf()))
            })
            .cloned()
            .collect();
        let mut parents = Vec::new();
        for p in entries.iter().chain(whiteouts.iter()) {
            for a in p.ancestors().skip(1) {
                if a.as_os_str().is_empty() {
                    break;
                }
                parents.push(a.to_path_buf());
            }
        }
        entries.extend(parents);
        Ok(Expected {
            entries,
            opaque,
            whiteouts,
        })
    }
}

/// The mtime the layer writer records for `mtime`: whole seconds, clamped.
fn layer_mtime(mtime: i64, epoch: u64) -> i64 {
    let t = u64::try_from(mtime)
        .unwrap_or(0)
        .min(epoch)
        .min(MAX_TAR_MTIME);
    i64::try_from(t).unwrap_or(0)
}

/// Checks that `upper` (the upper directory `step` ran in, over a chain, with nothing
/// written before the step) shows, over that chain, exactly what the step's layer shows
/// once unpacked, up to times; returns the times to set.
pub fn check(upper: &Path, step: &MissedStep<'_>) -> Result<Normalization, Refusal> {
    let expected = Expected::of(step.changes)?;
    let mut walk = Walk {
        upper,
        step,
        expected: &expected,
        seen_entries: 0,
        seen_whiteouts: 0,
        out: Normalization::default(),
        names: vec![0; 1024],
    };
    walk.dir(Path::new(""), false)?;
    if walk.seen_entries != expected.entries.len()
        || walk.seen_whiteouts != expected.whiteouts.len()
    {
        let missing = expected
            .entries
            .iter()
            .chain(expected.whiteouts.iter())
            .find(|p| std::fs::symlink_metadata(upper.join(p)).is_err())
            .cloned()
            .unwrap_or_default();
        return Err(Refusal::Missing(missing));
    }
    Ok(walk.out)
}

/// Sets the times `check` found to the layer's (access time too: the applier sets both).
pub fn normalize(upper: &Path, plan: &Normalization) -> Result<(), std::io::Error> {
    for (rel, mtime) in &plan.entries {
        let ts = Timespec {
            tv_sec: *mtime,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        rustix::fs::utimensat(CWD, upper.join(rel), &times, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

struct Walk<'a> {
    upper: &'a Path,
    step: &'a MissedStep<'a>,
    expected: &'a Expected,
    seen_entries: usize,
    seen_whiteouts: usize,
    out: Normalization,
    names: Vec<u8>,
}

impl Walk<'_> {
    /// Walks the directory `rel` of the upper; `in_opaque`: `rel` is at or below a directory
    /// the layer writes whole.
    fn dir(&mut self, rel: &Path, in_opaque: bool) -> Result<(), Refusal> {
        let full = self.upper.join(rel);
        let read = std::fs::read_dir(&full).map_err(|source| Refusal::Io {
            action: "read directory",
            path: full.clone(),
            source,
        })?;
        for entry in read {
            let entry = entry.map_err(|source| Refusal::Io {
                action: "read directory",
                path: full.clone(),
                source,
            })?;
            let child = rel.join(entry.file_name());
            let meta = entry.metadata().map_err(|source| Refusal::Io {
                action: "inspect",
                path: self.upper.join(&child),
                source,
            })?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                // Overlay's whiteout: a deletion, with nothing below.
                if in_opaque || !self.expected.whiteouts.contains(&child) {
                    return Err(Refusal::Whiteout(child));
                }
                self.seen_whiteouts += 1;
                continue;
            }
            let in_opaque = in_opaque || self.expected.opaque.contains(&child);
            let listed = self.expected.entries.contains(&child);
            let in_layer = in_opaque || listed;
            let marked_opaque = self.xattrs(&child, in_layer)?;
            if marked_opaque != self.expected.opaque.contains(&child)
                && !(marked_opaque && in_opaque)
            {
                // Opaque in the upper but not in the layer hides what unpacking keeps, and
                // the reverse shows what unpacking removes.
                return Err(Refusal::Opaque(child));
            }
            if listed {
                self.seen_entries += 1;
            }
            if in_layer {
                if ft.is_socket() {
                    return Err(Refusal::Socket(child));
                }
                let mtime = layer_mtime(meta.mtime(), self.step.source_date_epoch);
                self.out.entries.push((child.clone(), mtime));
            } else {
                // A directory copied up and left as it was (the snapshot saw no change in
                // it): it shows what the chain below shows, provided the snapshot walked it.
                if !ft.is_dir() {
                    return Err(Refusal::Leftover(child));
                }
                if self.unwalked(&child) {
                    return Err(Refusal::Unwalked(child));
                }
            }
            if ft.is_dir() {
                self.dir(&child, in_opaque)?;
            }
        }
        Ok(())
    }

    /// Whether the snapshots skipped `rel`: excluded itself or below an excluded path, or
    /// inside a directory whose contents are not walked (`/dev`, …).
    fn unwalked(&self, rel: &Path) -> bool {
        let options = self.step.snapshot;
        rel.ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| options.exclude.contains(a))
            || rel
                .ancestors()
                .skip(1)
                .any(|a| options.skip_contents.contains(a))
    }

    /// Checks the xattrs of `rel`; returns whether overlay marks it opaque.
    fn xattrs(&mut self, rel: &Path, in_layer: bool) -> Result<bool, Refusal> {
        let full = self.upper.join(rel);
        let io = |action| {
            let path = full.clone();
            move |e: rustix::io::Errno| Refusal::Io {
                action,
                path,
                source: e.into(),
            }
        };
        let n = loop {
            match rustix::fs::llistxattr(&full, &mut self.names[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::llistxattr(&full, &mut [0u8; 0][..])
                        .map_err(io("list xattrs of"))?;
                    let len = need.max(self.names.len() * 2);
                    self.names.resize(len, 0);
                }
                Err(rustix::io::Errno::NOTSUP) => return Ok(false),
                Err(e) => return Err(io("list xattrs of")(e)),
            }
        };
        let mut opaque = false;
        let names = self.names[..n].to_vec();
        for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let name = String::from_utf8_lossy(raw).into_owned();
            if let Some(own) = name.strip_prefix("trusted.overlay.") {
                match own {
                    // Where a copy-up came from, and that a directory holds copied-up
                    // entries: read for upper directories only, inert in a lower one.
                    "origin" | "impure" => {}
                    "opaque" => {
                        let mut value = [0u8; 8];
                        let len = rustix::fs::lgetxattr(&full, OsStr::from_bytes(raw), &mut value)
                            .map_err(io("read xattr of"))?;
                        if value[..len] != *b"y" {
                            return Err(Refusal::OverlayXattr {
                                path: rel.to_owned(),
                                name,
                            });
                        }
                        opaque = true;
                    }
                    _ => {
                        return Err(Refusal::OverlayXattr {
                            path: rel.to_owned(),
                            name,
                        });
                    }
                }
                continue;
            }
            // The layer writer leaves these out: the unpacked entry would lack them.
            let dropped = std::str::from_utf8(raw).is_err()
                || name == "security.selinux"
                || name.starts_with("user.overlay.");
            if in_layer && dropped {
                return Err(Refusal::Xattr {
                    path: rel.to_owned(),
                    name,
                });
            }
        }
        Ok(opaque)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotOptions;
    use stagecoach_oci::Digest;
    use stagecoach_protocol::LayerRecord;

    fn layer() -> LayerRecord {
        LayerRecord {
            media_type: String::new(),
            digest: Digest::of_bytes(b"layer"),
            diff_id: Digest::of_bytes(b"diff"),
            size: 0,
        }
    }

    fn w(p: &str) -> Change {
        Change::Write(PathBuf::from(p))
    }

    fn run_check(upper: &Path, changes: &[Change]) -> Result<Normalization, Refusal> {
        let layer = layer();
        let mut snapshot = SnapshotOptions::default();
        for d in ["proc", "sys", "dev"] {
            snapshot.skip_contents.insert(PathBuf::from(d));
        }
        snapshot.exclude(Path::new("/mnt/cache"));
        let step = MissedStep {
            layer: &layer,
            changes,
            snapshot: &snapshot,
            source_date_epoch: 1_000,
        };
        check(upper, &step)
    }

    fn whiteout(path: &Path) {
        rustix::fs::mknodat(
            CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    }

    fn root() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        println!("SKIP: whiteouts are device nodes, made as root");
        false
    }

    #[test]
    fn a_layers_changes_and_copied_up_parents_pass_and_get_the_layers_times() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path();
        std::fs::create_dir_all(u.join("data/sub")).unwrap();
        std::fs::write(u.join("data/sub/f"), "x").unwrap();
        std::os::unix::fs::symlink("sub/f", u.join("data/link")).unwrap();
        // Copied up to hold a mount stub, left as it was: not in the layer.
        std::fs::create_dir(u.join("etc")).unwrap();
        whiteout(&u.join("gone"));
        let changes = [
            w("data/sub"),
            w("data/sub/f"),
            w("data/link"),
            Change::Delete(PathBuf::from("gone")),
        ];
        let plan = run_check(u, &changes).unwrap();
        // data (a parent the writer adds), data/sub, data/sub/f, data/link.
        assert_eq!(plan.len(), 4);
        normalize(u, &plan).unwrap();
        for p in ["data", "data/sub", "data/sub/f", "data/link"] {
            let m = std::fs::symlink_metadata(u.join(p)).unwrap();
            assert_eq!(
                (m.mtime(), m.mtime_nsec(), m.atime()),
                (1_000, 0, 1_000),
                "{p}"
            );
        }
        let etc = std::fs::metadata(u.join("etc")).unwrap();
        assert!(
            etc.mtime() > 1_000,
            "a directory the layer lacks keeps its time"
        );
    }

    #[test]
    fn leftovers_unknown_whiteouts_and_missing_entries_are_refused() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path();
        std::fs::write(u.join("stub"), "").unwrap();
        assert!(matches!(run_check(u, &[]), Err(Refusal::Leftover(_))));
        std::fs::remove_file(u.join("stub")).unwrap();

        whiteout(&u.join("gone"));
        assert!(matches!(run_check(u, &[]), Err(Refusal::Whiteout(_))));
        std::fs::remove_file(u.join("gone")).unwrap();

        std::fs::create_dir_all(u.join("dev/pts")).unwrap();
        assert!(matches!(run_check(u, &[]), Err(Refusal::Unwalked(_))));
        std::fs::remove_dir_all(u.join("dev")).unwrap();

        std::fs::create_dir_all(u.join("mnt/cache")).unwrap();
        assert!(matches!(run_check(u, &[]), Err(Refusal::Unwalked(_))));
        std::fs::remove_dir_all(u.join("mnt")).unwrap();

        assert!(matches!(
            run_check(u, &[w("new")]),
            Err(Refusal::Missing(_))
        ));
        assert!(matches!(
            run_check(u, &[Change::Delete(PathBuf::from("old"))]),
            Err(Refusal::Missing(_))
        ));
        assert!(matches!(
            run_check(u, &[Change::WriteTree(PathBuf::from("t"))]),
            Err(Refusal::TreeChange(_))
        ));
        assert!(run_check(u, &[]).unwrap().is_empty());
    }

    #[test]
    fn opaque_directories_must_match_the_layer() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path();
        std::fs::create_dir_all(u.join("redo/inner")).unwrap();
        std::fs::write(u.join("redo/inner/f"), "x").unwrap();
        let opaque = [Change::Opaque(PathBuf::from("redo"))];
        // The layer says opaque, the upper does not: the chain's old entries would show.
        assert!(matches!(run_check(u, &opaque), Err(Refusal::Opaque(_))));
        rustix::fs::lsetxattr(
            u.join("redo"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let plan = run_check(u, &opaque).unwrap();
        assert_eq!(plan.len(), 3, "the directory and everything below it");
        // Opaque in the upper where the layer only writes the directory: unpacking would
        // keep the chain's entries below it.
        assert!(matches!(
            run_check(u, &[w("redo"), w("redo/inner"), w("redo/inner/f")]),
            Err(Refusal::Opaque(_))
        ));
        rustix::fs::lsetxattr(
            u.join("redo"),
            "trusted.overlay.redirect",
            b"/elsewhere",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert!(matches!(
            run_check(u, &opaque),
            Err(Refusal::OverlayXattr { .. })
        ));
    }

    #[test]
    fn sockets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path();
        let _listener = std::os::unix::net::UnixListener::bind(u.join("sock")).unwrap();
        assert!(matches!(
            run_check(u, &[w("sock")]),
            Err(Refusal::Socket(_))
        ));
    }

    #[test]
    fn layer_times_are_whole_clamped_seconds() {
        assert_eq!(layer_mtime(5, 1_000), 5);
        assert_eq!(layer_mtime(2_000, 1_000), 1_000);
        assert_eq!(layer_mtime(-3, 1_000), 0);
    }
}
