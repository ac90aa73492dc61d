//! `stagecoach_source::fetch` over smart HTTP: real `git http-backend` behind a minimal
//! server, with and without basic authentication. Checks that the request's credentials are
//! used without any prompt or helper, and that refused or missing ones are `GitAuthFailed`
//! with no password in the message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/http.rs"]
mod http_server;

use common::{Scratch, free_port, read};
use http_server::HttpServer;
use stagecoach_source::{BasicAuth, FetchError, Fetched, GitRequest, fetch};

fn auth(username: &str, password: &str) -> Option<BasicAuth> {
    Some(BasicAuth {
        username: username.to_string(),
        password: password.to_string(),
    })
}

fn expect_error(result: Result<Fetched, FetchError>, reason: &str, url: &str) -> String {
    let error = result.expect_err("the fetch fails");
    let message = error.to_string();
    assert_eq!(error.reason(), reason, "{message}");
    assert!(message.contains(url), "{message}");
    assert!(
        !message.contains("s3cret") && !message.contains("wrong-pass"),
        "{message}"
    );
    assert!(!format!("{error:?}").contains("wrong-pass"));
    eprintln!("{reason}: {message}");
    message
}

#[test]
fn anonymous_http_fetches_a_branch_shallow() {
    let s = Scratch::new();
    let server = HttpServer::start(&s.repos(), None);
    let url = server.url("repo");
    let dest = s.dest("ctx");
    let got = fetch(
        &GitRequest {
            url: &url,
            revision: Some("feature"),
            credentials: None,
        },
        &dest,
    )
    .unwrap();
    assert_eq!(got.commit, s.history.feature);
    assert!(got.shallow);
    assert_eq!(read(&dest, "VERSION"), "feature\n");
    assert!(!dest.join(".git").exists());
    // A commit by id over HTTP (protocol v2 through the Git-Protocol header).
    let got = fetch(
        &GitRequest {
            url: &url,
            revision: Some(&s.history.second),
            credentials: None,
        },
        &dest,
    )
    .unwrap();
    assert_eq!(got.commit, s.history.second);
    assert!(got.shallow);
}

#[test]
fn basic_auth_from_the_request_is_accepted() {
    let s = Scratch::new();
    let server = HttpServer::start(&s.repos(), Some(("ci", "s3cret")));
    let url = server.url("repo");
    let dest = s.dest("ctx");
    let got = fetch(
        &GitRequest {
            url: &url,
            revision: None,
            credentials: auth("ci", "s3cret"),
        },
        &dest,
    )
    .unwrap();
    assert_eq!(got.commit, s.history.main);
    assert_eq!(read(&dest, "VERSION"), "main\n");
}

#[test]
fn wrong_or_missing_credentials_are_auth_failures() {
    let s = Scratch::new();
    let server = HttpServer::start(&s.repos(), Some(("ci", "s3cret")));
    let url = server.url("repo");
    let dest = s.dest("ctx");
    expect_error(
        fetch(
            &GitRequest {
                url: &url,
                revision: Some("main"),
                credentials: auth("ci", "wrong-pass"),
            },
            &dest,
        ),
        "GitAuthFailed",
        &url,
    );
    // No credentials: an immediate failure, no prompt, no credential helper.
    expect_error(
        fetch(
            &GitRequest {
                url: &url,
                revision: Some("main"),
                credentials: None,
            },
            &dest,
        ),
        "GitAuthFailed",
        &url,
    );
    // A password in the URL is not echoed either.
    let with_password = url.replace("http://", "http://ci:wrong-pass@");
    let message = expect_error(
        fetch(
            &GitRequest {
                url: &with_password,
                revision: None,
                credentials: None,
            },
            &dest,
        ),
        "GitAuthFailed",
        "ci:<redacted>@127.0.0.1",
    );
    assert!(!message.contains("wrong-pass"));
    assert!(!dest.exists());
}

#[test]
fn a_closed_http_port_is_unreachable() {
    let s = Scratch::new();
    let url = format!("http://127.0.0.1:{}/repo", free_port());
    expect_error(
        fetch(
            &GitRequest {
                url: &url,
                revision: None,
                credentials: auth("ci", "s3cret"),
            },
            &s.dest("ctx"),
        ),
        "GitUnreachable",
        &url,
    );
}

#[test]
fn a_missing_http_repository_is_a_git_failure() {
    let s = Scratch::new();
    let server = HttpServer::start(&s.repos(), None);
    let url = server.url("missing");
    expect_error(
        fetch(
            &GitRequest {
                url: &url,
                revision: None,
                credentials: None,
            },
            &s.dest("ctx"),
        ),
        "GitFailed",
        &url,
    );
}
