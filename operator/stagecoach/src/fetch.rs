//! `stagecoach fetch --spec FILE`: a fetch pod's command (in the operator image). It checks
//! a git source out into the build's context directory on the cache volume, prints the
//! Dockerfile to standard output as `stagecoach-dockerfile:` lines (the controller cannot
//! read the volume; the pod's log is how the text reaches it) and writes a `FetchResult`
//! as its termination message. A failure is a `FetchFailure` termination message and exit
//! code 1. Only this container sees the git credentials; no user code runs in it.

use std::path::{Component, Path, PathBuf};

use stagecoach_protocol::Digest;
use stagecoach_protocol::condition::Reason;
use stagecoach_protocol::job::{
    FetchFailure, FetchJob, FetchResult, JOB_VERSION, MAX_FETCHED_DOCKERFILE, dockerfile_log_lines,
};
use stagecoach_source::{BasicAuth, GitRequest, redact_url};

/// Arguments of `stagecoach fetch`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The fetch job, as JSON.
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Where the result goes: the container's termination message.
    #[arg(long, value_name = "FILE", default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

/// A successful fetch: the termination message and the log lines carrying the Dockerfile.
#[derive(Debug)]
pub struct Fetched {
    /// The termination message.
    pub result: FetchResult,
    /// The Dockerfile, as [`dockerfile_log_lines`] splits it.
    pub lines: Vec<String>,
}

/// Runs `stagecoach fetch`; returns the exit code (0, or 1 with a `FetchFailure`).
pub fn run(args: &FetchArgs) -> u8 {
    run_to(args, &mut std::io::stdout().lock())
}

/// [`run`], printing the Dockerfile's lines to `out`.
fn run_to(args: &FetchArgs, out: &mut dyn std::io::Write) -> u8 {
    let outcome = read_job(&args.spec).and_then(|job| {
        tracing::info!(
            "[fetch] {} at {}",
            redact_url(&job.url),
            revision_text(&job)
        );
        let fetched = fetch_job(&job)?;
        print_lines(out, &fetched.lines)?;
        tracing::info!(
            "[fetch] commit {}, Dockerfile {} ({} bytes)",
            fetched.result.commit,
            job.dockerfile,
            fetched.result.dockerfile_size
        );
        Ok(fetched)
    });
    let (message, code) = match outcome {
        Ok(fetched) => (serde_json::to_vec(&fetched.result), 0),
        Err(failure) => {
            tracing::error!("error: fetch: {}: {}", failure.reason, failure.message);
            (serde_json::to_vec(&bounded(failure)), 1)
        }
    };
    match message {
        Ok(bytes) => {
            if let Err(e) = std::fs::write(&args.termination_log, bytes) {
                tracing::warn!(
                    "warning: cannot write the termination message {}: {e}",
                    args.termination_log.display()
                );
            }
        }
        Err(e) => tracing::warn!("warning: cannot encode the termination message: {e}"),
    }
    code
}

/// The job in `path`, of this version.
fn read_job(path: &Path) -> Result<FetchJob, FetchFailure> {
    let invalid = |detail: String| {
        failure(
            Reason::SourceFetchFailed,
            format!("the fetch job {} is not valid: {detail}", path.display()),
        )
    };
    let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let job: FetchJob = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if job.version != JOB_VERSION {
        return Err(invalid(format!(
            "version {}; this stagecoach reads {JOB_VERSION}",
            job.version
        )));
    }
    Ok(job)
}

/// The Dockerfile's pieces on standard output, where the controller reads the pod's log.
fn print_lines(out: &mut dyn std::io::Write, lines: &[String]) -> Result<(), FetchFailure> {
    lines
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush())
        .map_err(|e| {
            failure(
                Reason::SourceFetchFailed,
                format!("cannot print the Dockerfile to the log: {e}"),
            )
        })
}

/// Fetches the job's source into `job.dest` and reads its Dockerfile.
pub fn fetch_job(job: &FetchJob) -> Result<Fetched, FetchFailure> {
    let source = source_text(job);
    let sub_path = relative_path(&job.sub_path).ok_or_else(|| {
        failure(
            Reason::SourceFetchFailed,
            format!(
                "the subPath {:?} of {source} is not a relative path inside the repository",
                job.sub_path
            ),
        )
    })?;
    let dockerfile = relative_path(&job.dockerfile)
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            failure(
                Reason::InvalidDockerfile,
                format!(
                    "the Dockerfile path {:?} is not a relative path inside the context of \
                     {source}",
                    job.dockerfile
                ),
            )
        })?;
    let credentials = match &job.credentials {
        Some(dir) => Some(read_credentials(dir)?),
        None => None,
    };
    let request = GitRequest {
        url: &job.url,
        revision: job.revision.as_deref(),
        credentials,
    };
    let git_failed = |e: stagecoach_source::FetchError| {
        failure(Reason::SourceFetchFailed, format!("{}: {e}", e.reason()))
    };
    let commit = if sub_path.as_os_str().is_empty() {
        stagecoach_source::fetch(&request, &job.dest)
            .map_err(git_failed)?
            .commit
    } else {
        fetch_sub_path(job, &request, &sub_path, &source).map_err(|e| match e {
            SubPathError::Git(e) => git_failed(e),
            SubPathError::Failure(f) => f,
        })?
    };
    if let Some(limit) = job.max_bytes {
        let size = tree_bytes(&job.dest);
        if size > limit {
            // Nothing of it stays on the cache volume.
            let _ = std::fs::remove_dir_all(&job.dest);
            return Err(failure(
                Reason::SourceFetchFailed,
                format!(
                    "the context of {source} at commit {commit} holds {} ({size} bytes), over the \
                     limit of {} (the operator's --max-context-size, chart value \
                     builds.maxContextSize)",
                    human_bytes(size),
                    human_bytes(limit)
                ),
            ));
        }
    }
    let text = read_dockerfile(&job.dest, &dockerfile).map_err(|problem| {
        failure(
            Reason::InvalidDockerfile,
            format!(
                "the Dockerfile {} {problem} (in {source}, commit {commit})",
                job.dockerfile
            ),
        )
    })?;
    Ok(Fetched {
        result: FetchResult {
            commit,
            dockerfile_digest: Digest::of_bytes(text.as_bytes()),
            dockerfile_size: text.len() as u64,
        },
        lines: dockerfile_log_lines(&text),
    })
}

enum SubPathError {
    Git(stagecoach_source::FetchError),
    Failure(FetchFailure),
}

/// Fetches the whole repository beside `job.dest` and moves the `sub_path` directory into
/// place; the rest goes with the temporary directory. Returns the commit.
fn fetch_sub_path(
    job: &FetchJob,
    request: &GitRequest<'_>,
    sub_path: &Path,
    source: &str,
) -> Result<String, SubPathError> {
    let io_failed = |path: &Path, e: std::io::Error| {
        SubPathError::Failure(failure(
            Reason::SourceFetchFailed,
            format!("fetching {source}: {}: {e}", path.display()),
        ))
    };
    let parent = job
        .dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io_failed(parent, e))?;
    // On the same file system as the destination, so the final move is a rename.
    let scratch = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(parent)
        .map_err(|e| io_failed(parent, e))?;
    let checkout = scratch.path().join("repository");
    let commit = stagecoach_source::fetch(request, &checkout)
        .map_err(SubPathError::Git)?
        .commit;
    let missing = |what: &str| {
        SubPathError::Failure(failure(
            Reason::SourceFetchFailed,
            format!(
                "the subPath {} {what} in {source} at commit {commit}",
                job.sub_path
            ),
        ))
    };
    // Every component a real directory: a symbolic link in the repository must not make
    // the context some other directory of the pod (or of the next pod that reads it).
    let mut dir = checkout.clone();
    for component in sub_path.components() {
        dir.push(component);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(missing("passes through a symbolic link"));
            }
            Ok(m) if !m.is_dir() => return Err(missing("is not a directory")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing("does not exist"));
            }
            Err(e) => return Err(io_failed(&dir, e)),
        }
    }
    // The old context is moved aside first and goes with the scratch directory, so a
    // failed rename leaves it as it was.
    let old = scratch.path().join("old");
    let had_old = match std::fs::rename(&job.dest, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_failed(&job.dest, e)),
    };
    if let Err(e) = std::fs::rename(&dir, &job.dest) {
        if had_old {
            // Best effort; the rename's error is the one to report.
            let _ = std::fs::rename(&old, &job.dest);
        }
        return Err(io_failed(&job.dest, e));
    }
    Ok(commit)
}

/// The bytes of the regular files under `path` (symbolic links not followed).
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// A size as people read it: `3.2 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `path` as a relative path without `..` (`.` and empty components dropped); `None` when
/// it is absolute or climbs out.
fn relative_path(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The Dockerfile at `path` in the context `root`, as text; the error completes "the
/// Dockerfile <path> …".
fn read_dockerfile(root: &Path, path: &Path) -> Result<String, String> {
    let full = root.join(path);
    let resolved = match std::fs::canonicalize(&full) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("does not exist".to_string());
        }
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    let root = std::fs::canonicalize(root).map_err(|e| format!("cannot be read: {e}"))?;
    // A symbolic link may point anywhere; the Dockerfile must be a file of the context.
    if !resolved.starts_with(&root) {
        return Err("is a symbolic link that leaves the context".to_string());
    }
    let metadata = std::fs::metadata(&resolved).map_err(|e| format!("cannot be read: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a file".to_string());
    }
    if metadata.len() > MAX_FETCHED_DOCKERFILE {
        return Err(format!(
            "has {} bytes; at most {MAX_FETCHED_DOCKERFILE} are allowed",
            metadata.len()
        ));
    }
    let bytes = std::fs::read(&resolved).map_err(|e| format!("cannot be read: {e}"))?;
    // Checked again on the bytes read: the file could have grown in between.
    if bytes.len() as u64 > MAX_FETCHED_DOCKERFILE {
        return Err(format!(
            "has more than {MAX_FETCHED_DOCKERFILE} bytes, the most allowed"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// The `username` and `password` files of the credentials directory. A trailing line break
/// is dropped: secrets made from files often end with one, and no token contains one.
fn read_credentials(dir: &Path) -> Result<BasicAuth, FetchFailure> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| {
                failure(
                    Reason::SourceFetchFailed,
                    format!(
                        "the git credentials have no usable {name:?} ({}: {e})",
                        path.display()
                    ),
                )
            })
    };
    Ok(BasicAuth {
        username: read("username")?,
        password: read("password")?,
    })
}

fn revision_text(job: &FetchJob) -> String {
    match job.revision.as_deref() {
        Some(r) if !r.trim().is_empty() => format!("revision {r:?}"),
        _ => "the default branch".to_string(),
    }
}

/// The source as messages name it: URL (without a password), revision, subPath.
fn source_text(job: &FetchJob) -> String {
    let mut text = format!("{} at {}", redact_url(&job.url), revision_text(job));
    if !job.sub_path.is_empty() {
        text.push_str(&format!(", subPath {}", job.sub_path));
    }
    text
}

fn failure(reason: Reason, message: String) -> FetchFailure {
    FetchFailure {
        reason: reason.as_str().to_string(),
        message,
    }
}

/// A failure that fits a termination message (4 KiB with the JSON around it).
fn bounded(mut failure: FetchFailure) -> FetchFailure {
    const MAX: usize = 3072;
    if failure.message.len() > MAX {
        let mut end = MAX;
        while !failure.message.is_char_boundary(end) {
            end -= 1;
        }
        failure.message.truncate(end);
        failure.message.push('…');
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    use stagecoach_protocol::job::dockerfile_from_log;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "T")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "T")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    const DOCKERFILE: &str = "FROM busybox\nCOPY . /app\n";

    /// A repository with a root Dockerfile, an `app/` context with its own, and the odd
    /// files the failure tests need; returns its directory and the commit.
    fn repository(dir: &Path) -> (PathBuf, String) {
        let repo = dir.join("origin");
        let write = |path: &str, bytes: &[u8]| {
            let path = repo.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        write("Dockerfile", DOCKERFILE.as_bytes());
        write("app/Dockerfile", b"FROM scratch\n");
        write("app/src/main.c", b"int main;\n");
        write(
            "big.Dockerfile",
            &vec![b'#'; MAX_FETCHED_DOCKERFILE as usize + 1],
        );
        write("latin1.Dockerfile", b"FROM busybox\n# caf\xe9\n");
        // Checked out at `<dir>/context`, this points at `<dir>/secret`.
        std::os::unix::fs::symlink("../secret", repo.join("escape.Dockerfile")).unwrap();
        std::fs::write(dir.join("secret"), "FROM evil\n").unwrap();
        std::os::unix::fs::symlink("app/Dockerfile", repo.join("inside.Dockerfile")).unwrap();
        std::os::unix::fs::symlink("/etc", repo.join("linked")).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "one"]);
        let commit = git(&repo, &["rev-parse", "HEAD"]);
        (repo, commit)
    }

    fn job(repo: &Path, dest: &Path) -> FetchJob {
        FetchJob {
            version: JOB_VERSION,
            url: format!("file://{}", repo.display()),
            revision: None,
            sub_path: String::new(),
            dockerfile: "Dockerfile".to_string(),
            dest: dest.to_path_buf(),
            credentials: None,
            max_bytes: None,
        }
    }

    fn expect_failure(job: &FetchJob, reason: &str, needles: &[&str]) {
        let failure = fetch_job(job).unwrap_err();
        assert_eq!(failure.reason, reason, "{}", failure.message);
        for needle in needles {
            assert!(
                failure.message.contains(needle),
                "{needle:?} not in {:?}",
                failure.message
            );
        }
    }

    #[test]
    fn a_job_fetches_the_context_and_reports_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, commit) = repository(dir.path());
        let dest = dir.path().join("cache/builds/uid/context");
        let fetched = fetch_job(&job(&repo, &dest)).unwrap();
        assert_eq!(fetched.result.commit, commit);
        assert_eq!(fetched.result.dockerfile_size, DOCKERFILE.len() as u64);
        let log = format!("[fetch] starting\n{}\n", fetched.lines.join("\n"));
        assert_eq!(
            dockerfile_from_log(&log, &fetched.result).as_deref(),
            Some(DOCKERFILE)
        );
        assert!(dest.join("app/src/main.c").is_file());
        assert!(!dest.join(".git").exists());
        // A symbolic link to a file of the context is fine.
        let mut inside = job(&repo, &dest);
        inside.dockerfile = "./inside.Dockerfile".to_string();
        assert_eq!(
            fetch_job(&inside).unwrap().result.dockerfile_size,
            "FROM scratch\n".len() as u64
        );
    }

    #[test]
    fn a_context_over_the_limit_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, commit) = repository(dir.path());
        let dest = dir.path().join("cache/builds/uid/context");
        let size = tree_bytes(&repo) - tree_bytes(&repo.join(".git"));
        let mut job = job(&repo, &dest);
        job.max_bytes = Some(size - 1);
        expect_failure(
            &job,
            "SourceFetchFailed",
            &[
                &commit,
                &format!("({size} bytes)"),
                "over the limit of",
                "--max-context-size",
            ],
        );
        assert!(
            !dest.exists(),
            "the context over the limit was left on the volume"
        );
        // At the limit, it fetches.
        job.max_bytes = Some(size);
        fetch_job(&job).unwrap();
        assert_eq!(tree_bytes(&dest), size);
        assert_eq!(human_bytes(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        assert_eq!(human_bytes(900), "900 bytes");
    }

    #[test]
    fn a_sub_path_becomes_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, commit) = repository(dir.path());
        let dest = dir.path().join("context");
        // A context left by an earlier attempt is replaced.
        std::fs::create_dir_all(dest.join("stale")).unwrap();
        let mut app = job(&repo, &dest);
        app.sub_path = "app".to_string();
        let fetched = fetch_job(&app).unwrap();
        assert_eq!(fetched.result.commit, commit);
        assert_eq!(
            fetched.result.dockerfile_size,
            "FROM scratch\n".len() as u64
        );
        let mut names: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["Dockerfile", "src"]);
        // Only the context is left beside it: the rest of the repository went.
        let mut siblings: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        siblings.sort();
        assert_eq!(siblings, ["context", "origin", "secret"]);
    }

    #[test]
    fn a_sub_path_that_is_missing_or_a_link_is_a_source_fetch_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, commit) = repository(dir.path());
        let dest = dir.path().join("context");
        for (sub_path, what) in [
            ("nope", "does not exist"),
            ("linked", "symbolic link"),
            ("Dockerfile", "not a directory"),
            ("../outside", "not a relative path"),
        ] {
            let mut bad = job(&repo, &dest);
            bad.sub_path = sub_path.to_string();
            let mut needles = vec![sub_path, what];
            if what != "not a relative path" {
                needles.push(&commit);
            }
            expect_failure(&bad, "SourceFetchFailed", &needles);
        }
        assert!(!dest.exists());
    }

    #[test]
    fn bad_dockerfiles_are_invalid_dockerfile_naming_path_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, commit) = repository(dir.path());
        let dest = dir.path().join("context");
        for (path, what) in [
            ("missing.Dockerfile", "does not exist"),
            ("big.Dockerfile", "at most 262144"),
            ("latin1.Dockerfile", "not UTF-8"),
            ("escape.Dockerfile", "leaves the context"),
            ("app", "not a file"),
        ] {
            let mut bad = job(&repo, &dest);
            bad.dockerfile = path.to_string();
            expect_failure(&bad, "InvalidDockerfile", &[path, what, &commit]);
        }
        for path in ["../Dockerfile", "/etc/passwd", ""] {
            let mut bad = job(&repo, &dest);
            bad.dockerfile = path.to_string();
            expect_failure(&bad, "InvalidDockerfile", &["not a relative path"]);
        }
    }

    #[test]
    fn git_errors_are_source_fetch_failed_with_the_git_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = repository(dir.path());
        let mut bad = job(&repo, &dir.path().join("context"));
        bad.revision = Some("no-such-branch".to_string());
        expect_failure(
            &bad,
            "SourceFetchFailed",
            &["GitRevisionNotFound: ", "no-such-branch", &bad.url],
        );
    }

    #[test]
    fn credentials_come_from_the_directory_without_a_trailing_line_break() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("username"), "ci\n").unwrap();
        let missing = read_credentials(dir.path()).unwrap_err();
        assert!(
            missing.message.contains("\"password\""),
            "{}",
            missing.message
        );
        std::fs::write(dir.path().join("password"), "s3cret\r\n").unwrap();
        let auth = read_credentials(dir.path()).unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("ci", "s3cret")
        );
    }

    #[test]
    fn run_writes_the_result_or_the_failure_as_termination_message() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, commit) = repository(dir.path());
        let spec = dir.path().join("job.json");
        let log = dir.path().join("termination-log");
        let args = FetchArgs {
            spec: spec.clone(),
            termination_log: log.clone(),
        };
        let good = job(&repo, &dir.path().join("context"));
        std::fs::write(&spec, serde_json::to_vec(&good).unwrap()).unwrap();
        let mut stdout = Vec::new();
        assert_eq!(run_to(&args, &mut stdout), 0);
        let result: FetchResult = serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
        assert_eq!(result.commit, commit);
        let stdout = String::from_utf8(stdout).unwrap();
        assert_eq!(
            dockerfile_from_log(&stdout, &result).as_deref(),
            Some(DOCKERFILE)
        );
        assert!(
            stdout
                .lines()
                .all(|l| l.starts_with("stagecoach-dockerfile: "))
        );

        let mut bad = good;
        bad.revision = Some("no-such-branch".to_string());
        std::fs::write(&spec, serde_json::to_vec(&bad).unwrap()).unwrap();
        assert_eq!(run_to(&args, &mut Vec::new()), 1);
        let failure: FetchFailure = serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
        assert_eq!(failure.reason, "SourceFetchFailed");

        std::fs::write(&spec, b"{\"version\": 1}").unwrap();
        assert_eq!(run_to(&args, &mut Vec::new()), 1);
        let failure: FetchFailure = serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
        assert!(failure.message.contains("not valid"), "{}", failure.message);
    }
}
