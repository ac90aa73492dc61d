//! What the builder's tests that run real containers share: finding busybox, saying why a
//! test is skipped, and a busybox root to run in.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use stagecoach_builder::runc::RuncRunner;

/// Debian's `busybox-static`.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Whether `test` can run here (root, runc, busybox); prints why it is skipped when not.
/// `needs` says what root is needed for.
pub fn available(test: &str, needs: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP {test}: needs root ({needs})");
        return false;
    }
    if let Err(e) = RuncRunner::new().version() {
        println!("SKIP {test}: runc unavailable ({e})");
        return false;
    }
    if busybox().is_none() {
        println!("SKIP {test}: busybox missing (apt-get install -y busybox-static)");
        return false;
    }
    true
}

/// Copies busybox into `root/bin` with a relative link for each applet.
pub fn install_busybox(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let bb = busybox().unwrap();
    std::fs::copy(&bb, root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(&bb)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
}
