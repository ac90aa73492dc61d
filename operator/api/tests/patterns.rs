//! The schema's patterns accept what users write and reject what would break a build or the
//! cluster. The API server evaluates them with Go's RE2; regex-lite reads this syntax the same
//! way.

// Helpers outside #[test] functions fail loudly on purpose, like the tests themselves;
// clippy.toml's test exemption only reaches #[test] bodies.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use regex_lite::Regex;
use stagecoach_api::bounds;

fn check(name: &str, pattern: &str, good: &[&str], bad: &[&str]) {
    let re = Regex::new(pattern).unwrap_or_else(|e| panic!("{name}: {e}"));
    for value in good {
        assert!(re.is_match(value), "{name} should accept {value:?}");
    }
    for value in bad {
        assert!(!re.is_match(value), "{name} should reject {value:?}");
    }
}

#[test]
fn dns1123_subdomain() {
    check(
        "DNS1123_SUBDOMAIN",
        bounds::DNS1123_SUBDOMAIN,
        &["regcred", "a", "stagecoach-cache", "my.secret.v2", "0abc"],
        &["", "RegCred", "-a", "a-", "a_b", "a..b", ".a", "a.", "a b"],
    );
}

#[test]
fn stage_name() {
    check(
        "STAGE_NAME",
        bounds::STAGE_NAME,
        &["prod", "build-env", "go1.23", "a_b", "x"],
        &["", "Prod", "1st", "-x", "a b", "a/b", "$STAGE"],
    );
}

#[test]
fn context_path() {
    check(
        "CONTEXT_PATH",
        bounds::CONTEXT_PATH,
        &[
            "Dockerfile",
            "./Dockerfile",
            "docker/Dockerfile.prod",
            ".hidden/Dockerfile",
            "..dots/Dockerfile",
            "a/.../b",
            "a/b..c",
        ],
        &[
            "",
            "/Dockerfile",
            "../Dockerfile",
            "a/../../Dockerfile",
            "a/..",
            "..",
            "a//b",
            "a/",
        ],
    );
}

#[test]
fn sub_path() {
    check(
        "SUB_PATH",
        bounds::SUB_PATH,
        &["", "services/api", "services/api/", "./app", "."],
        &["/", "/abs", "..", "a/../..", "a//b"],
    );
}

#[test]
fn git_url() {
    check(
        "GIT_URL",
        bounds::GIT_URL,
        &[
            "https://example.com/team/who.git",
            "http://git.local:3000/x",
            "ssh://git@example.com/team/who.git",
            "git://example.com/who",
            "git@github.com:team/who.git",
        ],
        &[
            "",
            "example.com/who",
            "file:///etc",
            "https://exa mple.com",
            "-uhttps://x",
            "ext::sh -c id",
        ],
    );
}

#[test]
fn git_revision() {
    check(
        "GIT_REVISION",
        bounds::GIT_REVISION,
        &["main", "v1.2.3", "refs/heads/feature/x", "0123abcd"],
        &["", "-x", "--upload-pack=evil", "a b", "main\n"],
    );
}

#[test]
fn image_reference() {
    check(
        "IMAGE_REFERENCE",
        bounds::IMAGE_REFERENCE,
        &[
            "registry.example.com/apps/who:2.0",
            "localhost:5000/hello",
            "busybox",
            "Registry.Example.com/x@sha256:abc",
        ],
        &["", " busybox", "a b", "-x", "/x"],
    );
}

#[test]
fn timeout() {
    check(
        "TIMEOUT",
        bounds::TIMEOUT,
        &["30m", "1h", "1h30m", "90s", "2h0m5s", "99999h"],
        &["30", "1m1h", "1.5h", "-1h", "1d", "100000h", "1ms", "30 m"],
    );
    // The pattern and the Rust parser agree on every example the schema accepts with a
    // non-zero value.
    for text in ["30m", "1h", "1h30m", "90s", "2h0m5s", "99999h"] {
        assert!(stagecoach_api::parse_timeout(text).is_ok(), "{text}");
    }
}

#[test]
fn digest_and_summary() {
    check(
        "DIGEST",
        bounds::DIGEST,
        &[
            &format!("sha256:{}", "0f".repeat(32)),
            &format!("sha512:{}", "a".repeat(128)),
        ],
        &[
            "sha256:abc",
            &format!("sha256:{}", "0F".repeat(32)),
            &format!("md5:{}", "0".repeat(32)),
        ],
    );
    check(
        "STAGES_SUMMARY",
        bounds::STAGES_SUMMARY,
        &["0/0", "2/5", "128/128"],
        &["2 / 5", "2/", "/5", "a/b"],
    );
}

#[test]
fn condition_reason() {
    check(
        "CONDITION_REASON",
        bounds::CONDITION_REASON,
        &["Succeeded", "StageFailed", "A", "Reason_1"],
        &["", "stage failed", "Bad-Reason", "Trailing:"],
    );
}

#[test]
fn build_secret_ids_and_keys() {
    check(
        "SECRET_ID",
        bounds::SECRET_ID,
        &["npmrc", "aws_creds", "GIT-TOKEN", "id.v2", "-x", "_"],
        &["", ".npmrc", "..", "a/b", "a b", "$ID", "a=b"],
    );
    check(
        "SECRET_KEY",
        bounds::SECRET_KEY,
        &[".npmrc", "token", "config.json", "A_B-c"],
        &["", "a/b", "a b", "key:1"],
    );
}

#[test]
fn status_stage() {
    check(
        "STATUS_STAGE",
        bounds::STATUS_STAGE,
        &["prod", "build-env", "0", "12"],
        &["", "Prod", "1st", "-x", "a b", "3a"],
    );
}
