//! `stagecoach_source::fetch` against real git: repositories made with the git CLI, served by
//! a real `git daemon` (git://) or read through file:// URLs. Each test checks what a build
//! would see: the files of the right commit, the commit id `git rev-parse` gives, no `.git`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{Daemon, Scratch, file_url, free_port, git, listing, read};
use stagecoach_source::{FetchError, Fetched, GitRequest, fetch};

fn request<'a>(url: &'a str, revision: Option<&'a str>) -> GitRequest<'a> {
    GitRequest {
        url,
        revision,
        credentials: None,
    }
}

/// `dest` holds the checkout of `commit` of `repo`: the same files as `git archive` would
/// give (here: as `git ls-tree` lists), no `.git`, and the expected `VERSION`.
fn assert_checkout(dest: &Path, repo: &Path, commit: &str, version: &str) {
    assert!(!dest.join(".git").exists(), "{} has a .git", dest.display());
    assert_eq!(read(dest, "VERSION"), format!("{version}\n"));
    let mut expected: Vec<String> = git(repo, &["ls-tree", "-r", "-t", "--name-only", commit])
        .lines()
        .map(|p| {
            if git(repo, &["cat-file", "-t", &format!("{commit}:{p}")]) == "tree" {
                format!("{p}/")
            } else {
                p.to_string()
            }
        })
        .collect();
    expected.sort();
    assert_eq!(listing(dest), expected);
}

fn fetched(commit: &str) -> Fetched {
    Fetched {
        commit: commit.to_string(),
        shallow: true,
    }
}

#[test]
fn default_branch_over_git_daemon_is_a_shallow_checkout_of_head() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("repo");
    let dest = s.dest("ctx");
    let got = fetch(&request(&url, None), &dest).unwrap();
    assert_eq!(got, fetched(&git(&s.repo(), &["rev-parse", "main"])));
    assert_eq!(got.commit, s.history.main);
    assert_checkout(&dest, &s.repo(), &s.history.main, "main");
    // Only the destination is left beside it: the staging directory is gone.
    let siblings: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec!["ctx"]);
}

#[test]
fn a_branch_over_git_daemon() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("repo");
    let dest = s.dest("ctx");
    let got = fetch(&request(&url, Some("feature")), &dest).unwrap();
    assert_eq!(got, fetched(&s.history.feature));
    assert_checkout(&dest, &s.repo(), &s.history.feature, "feature");
}

#[test]
fn annotated_and_lightweight_tags_give_the_tagged_commit() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("repo");
    for tag in ["v1.0", "light", "refs/tags/v1.0"] {
        let dest = s.dest(tag);
        let got = fetch(&request(&url, Some(tag)), &dest).unwrap();
        // The commit, not the annotated tag object.
        assert_eq!(
            got,
            fetched(&git(&s.repo(), &["rev-parse", "v1.0^{commit}"]))
        );
        assert_eq!(got.commit, s.history.tagged);
        assert_checkout(&dest, &s.repo(), &s.history.tagged, "tagged");
    }
}

#[test]
fn a_commit_that_is_no_tip_is_fetched_shallow_by_id() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("repo");
    let dest = s.dest("ctx");
    let got = fetch(&request(&url, Some(&s.history.second)), &dest).unwrap();
    assert_eq!(got, fetched(&s.history.second));
    assert_checkout(&dest, &s.repo(), &s.history.second, "second");
    // Upper case is the same id.
    let upper = s.history.second.to_ascii_uppercase();
    let got = fetch(&request(&url, Some(&upper)), &dest).unwrap();
    assert_eq!(got.commit, s.history.second);
}

#[test]
fn file_urls_work_like_the_daemon() {
    let s = Scratch::new();
    let url = file_url(&s.repo());
    let dest = s.dest("ctx");
    let got = fetch(&request(&url, None), &dest).unwrap();
    assert_eq!(got, fetched(&s.history.main));
    assert_checkout(&dest, &s.repo(), &s.history.main, "main");
    let got = fetch(&request(&url, Some(&s.history.second)), &dest).unwrap();
    assert_eq!(got, fetched(&s.history.second));
    assert_checkout(&dest, &s.repo(), &s.history.second, "second");
    let got = fetch(&request(&url, Some("v1.0")), &dest).unwrap();
    assert_eq!(got.commit, s.history.tagged);
}

#[test]
fn a_refetch_replaces_the_destination() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("repo");
    let dest = s.dest("ctx");
    fetch(&request(&url, Some("feature")), &dest).unwrap();
    std::fs::write(dest.join("stray.txt"), "left over").unwrap();
    std::fs::create_dir(dest.join(".git")).unwrap();
    let got = fetch(&request(&url, None), &dest).unwrap();
    assert_eq!(got.commit, s.history.main);
    assert_checkout(&dest, &s.repo(), &s.history.main, "main");
}

#[test]
fn a_failed_fetch_leaves_the_previous_destination_alone() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("repo");
    let dest = s.dest("ctx");
    fetch(&request(&url, Some("feature")), &dest).unwrap();
    fetch(&request(&url, Some("no-such-branch")), &dest).unwrap_err();
    assert_checkout(&dest, &s.repo(), &s.history.feature, "feature");
    assert_eq!(std::fs::read_dir(s.dest("")).unwrap().count(), 1);
}

fn expect_error(result: Result<Fetched, FetchError>, reason: &str, needles: &[&str]) -> String {
    let error = result.expect_err("the fetch fails");
    let message = error.to_string();
    assert_eq!(error.reason(), reason, "{message}");
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    eprintln!("{reason}: {message}");
    message
}

#[test]
fn unknown_names_and_commits_are_revision_not_found() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("repo");
    let dest = s.dest("ctx");
    expect_error(
        fetch(&request(&url, Some("no-such-branch")), &dest),
        "GitRevisionNotFound",
        &[&url, "no-such-branch"],
    );
    let missing = "0123456789abcdef0123456789abcdef01234567";
    expect_error(
        fetch(&request(&url, Some(missing)), &dest),
        "GitRevisionNotFound",
        &[&url, missing],
    );
    // An abbreviated commit id cannot be fetched; the message says so.
    let short = &s.history.second[..10];
    expect_error(
        fetch(&request(&url, Some(short)), &dest),
        "GitRevisionNotFound",
        &[short, "40-hex"],
    );
    // Nothing was written.
    assert!(!dest.exists());
    assert_eq!(listing(&s.dest("")), Vec::<String>::new());
}

#[test]
fn unknown_names_over_file_urls_are_revision_not_found() {
    let s = Scratch::new();
    let url = file_url(&s.repo());
    let missing = "0123456789abcdef0123456789abcdef01234567";
    for revision in ["no-such-branch", missing] {
        expect_error(
            fetch(&request(&url, Some(revision)), &s.dest("ctx")),
            "GitRevisionNotFound",
            &[&url, revision],
        );
    }
}

#[test]
fn a_closed_port_is_unreachable() {
    let s = Scratch::new();
    let url = format!("git://127.0.0.1:{}/repo", free_port());
    expect_error(
        fetch(&request(&url, Some("main")), &s.dest("ctx")),
        "GitUnreachable",
        &[&url, "main"],
    );
}

#[test]
fn an_unknown_host_is_unreachable() {
    let s = Scratch::new();
    let url = "git://no-such-host.invalid/repo";
    expect_error(
        fetch(&request(url, None), &s.dest("ctx")),
        "GitUnreachable",
        &[url, "default branch"],
    );
}

#[test]
fn a_missing_repository_names_the_url() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("missing");
    expect_error(
        fetch(&request(&url, None), &s.dest("ctx")),
        "GitFailed",
        &[&url],
    );
    let url = file_url(&s.dir.path().join("missing"));
    expect_error(
        fetch(&request(&url, None), &s.dest("ctx")),
        "GitFailed",
        &[&url],
    );
}

#[test]
fn unsupported_urls_are_refused() {
    let s = Scratch::new();
    for url in [
        "ssh://git@example.invalid/r.git",
        "git@example.invalid:r.git",
    ] {
        expect_error(
            fetch(&request(url, None), &s.dest("ctx")),
            "GitFailed",
            &["not supported"],
        );
    }
}

#[test]
fn an_empty_repository_has_no_default_branch() {
    let s = Scratch::new();
    let empty = s.repos().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    git(&empty, &["init", "-q", "-b", "main"]);
    let daemon = Daemon::start(&s.repos());
    let url = daemon.url("empty");
    expect_error(
        fetch(&request(&url, None), &s.dest("ctx")),
        "GitRevisionNotFound",
        &[&url, "default branch"],
    );
}
