//! The fetch itself, with gix: a bare repository in the staging directory, one connection
//! that lists the refs the revision could name and fetches the chosen one at depth 1, then a
//! checkout of the commit's tree into a separate directory (so no `.git` ends up in it).
//!
//! How each kind of revision is fetched:
//!
//! - the default branch: the `HEAD` refspec, depth 1;
//! - a name: `refs/heads/<name>` and `refs/tags/<name>` in one request (a branch wins over a
//!   tag of the same name, as with `git clone --branch`), depth 1; an annotated tag is peeled
//!   to its commit;
//! - a full reference name (`refs/…`, e.g. `refs/pull/1/head`): that ref, depth 1;
//! - a 40-hex commit id: the id itself as the refspec, depth 1. Servers speaking protocol v2
//!   (git ≥ 2.18, GitHub, GitLab) send any commit they have. A v0/v1 server refuses a commit
//!   it does not advertise unless it allows reachable or any ids in wants; only then the
//!   fetch is repeated without depth for every branch and tag, and the commit is looked up
//!   among what came.
//!
//! Depth 1 is only honoured over protocol v2 (gix's default, and what every current server
//! speaks): against a v0/v1-only server gix 0.91 also requests the `deepen-relative`
//! capability, so the server counts the depth from our empty shallow boundary and sends the
//! ref's whole history. The files are the same; the transfer is larger (a unit test pins it).
//!
//! The repository is opened isolated: no system or user git configuration, no environment
//! (so no `~/.gitconfig` credential helpers, URL rewrites or askpass programs), and the
//! credentials callback answers from the request alone, never prompting.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::credentials::helper::Action;
use gix::credentials::protocol::Outcome as CredentialsOutcome;
use gix::remote::Direction;
use gix::remote::fetch::{Shallow, Tags};

use crate::error::{self, FetchError, Kind};
use crate::{BasicAuth, Fetched, GitRequest};

/// What the revision names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The remote's `HEAD`.
    DefaultBranch,
    /// A branch or a tag.
    Name(String),
    /// A full reference name.
    FullRef(String),
    /// A commit (or an annotated tag object) by its full id.
    Commit(gix::ObjectId),
}

impl Target {
    fn of(revision: Option<&str>) -> Target {
        match revision.map(str::trim) {
            None | Some("") | Some("HEAD") => Target::DefaultBranch,
            Some(r) if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) => {
                match gix::ObjectId::from_hex(r.to_ascii_lowercase().as_bytes()) {
                    Ok(id) => Target::Commit(id),
                    Err(_) => Target::Name(r.to_string()),
                }
            }
            Some(r) if r.starts_with("refs/") => Target::FullRef(r.to_string()),
            Some(r) => Target::Name(r.to_string()),
        }
    }

    /// The refspecs that ask the server for it, most preferred first. A name must be a valid
    /// reference name: it becomes part of a refspec, where `:` or `*` would mean more.
    fn refspecs(&self) -> Result<Vec<String>, Failure> {
        let checked = |full: String| {
            gix::validate::reference::name(full.as_str().into())
                .map(|_| full.clone())
                .map_err(|e| Failure {
                    kind: Kind::RevisionNotFound,
                    detail: format!("not a valid branch, tag or reference name ({e})"),
                })
        };
        Ok(match self {
            Target::DefaultBranch => vec!["HEAD".to_string()],
            Target::Name(name) => vec![
                checked(format!("refs/heads/{name}"))?,
                checked(format!("refs/tags/{name}"))?,
            ],
            Target::FullRef(name) => vec![checked(name.clone())?],
            Target::Commit(id) => vec![id.to_string()],
        })
    }
}

/// Which transports a request may use: the ones a build context is documented to come from.
/// ssh needs keys and a known_hosts file the fetch pod does not have.
fn check_scheme(url: &gix::Url) -> Result<(), String> {
    use gix::url::Scheme;
    match url.scheme {
        Scheme::Http | Scheme::Https | Scheme::Git | Scheme::File => Ok(()),
        ref other => Err(format!(
            "the {} transport is not supported; use an https://, http://, git:// or file:// URL",
            other.as_str()
        )),
    }
}

/// Fetches `req` into a new bare repository at `git_dir` and checks the commit out into
/// `tree` (an existing, empty directory). `overrides` are git configuration values for the
/// repository (tests force protocol versions with them). The repository is returned for
/// tests to look into.
pub(crate) fn fetch_into(
    req: &GitRequest<'_>,
    git_dir: PathBuf,
    tree: PathBuf,
    overrides: &[&str],
) -> Result<(Fetched, gix::Repository), FetchError> {
    let url = gix::url::parse(gix::bstr::BStr::new(req.url))
        .map_err(|e| error::git(req, Kind::Failed, format!("not a valid git URL: {e}")))?;
    check_scheme(&url).map_err(|m| error::git(req, Kind::Failed, m))?;
    let target = Target::of(req.revision);
    let interrupt = AtomicBool::new(false);

    let repo = init(req, &git_dir, overrides)?;
    let id = match fetch_target(req, &repo, &url, &target, &interrupt) {
        Ok(id) => id,
        Err(e)
            if e.kind == Kind::WantRefused
                && let Target::Commit(id) = target =>
        {
            // Decide between "no such commit" and "this server does not hand out commits by
            // id" before paying for a full fetch.
            if !serves_any_commit(req, &repo, &url)? {
                let repo = reinit(req, &git_dir, overrides)?;
                return full_fetch_then_checkout(req, repo, &url, id, tree, &interrupt);
            }
            return Err(error::git(
                req,
                Kind::RevisionNotFound,
                format!("the server has no commit with this id ({})", e.detail),
            ));
        }
        Err(e) => return Err(e.into_error(req)),
    };
    checkout(req, repo, id, &tree, &interrupt)
}

/// A commit id on a server that refused it as a want: every branch and tag, full depth.
fn full_fetch_then_checkout(
    req: &GitRequest<'_>,
    repo: gix::Repository,
    url: &gix::Url,
    id: gix::ObjectId,
    tree: PathBuf,
    interrupt: &AtomicBool,
) -> Result<(Fetched, gix::Repository), FetchError> {
    let specs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
    remote(&repo, url, &specs)
        .and_then(|remote| {
            connect(req, &remote, url)?
                .prepare_fetch(gix::progress::Discard, Default::default())
                .map_err(Failure::from_gix)?
                .receive(gix::progress::Discard, interrupt)
                .map_err(Failure::from_gix)
        })
        .map_err(|e| e.into_error(req))?;
    if !repo.has_object(id) {
        return Err(error::git(
            req,
            Kind::RevisionNotFound,
            "no branch or tag of the repository contains it".to_string(),
        ));
    }
    checkout(req, repo, id, &tree, interrupt)
}

/// Creates the bare repository, isolated from every configuration but its own.
fn init(
    req: &GitRequest<'_>,
    git_dir: &Path,
    overrides: &[&str],
) -> Result<gix::Repository, FetchError> {
    gix::ThreadSafeRepository::init_opts(
        git_dir,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        gix::open::Options::isolated().config_overrides(overrides.iter().copied()),
    )
    .map(|repo| repo.to_thread_local())
    .map_err(|e| {
        error::io(
            req,
            git_dir.to_path_buf(),
            std::io::Error::other(e.to_string()),
        )
    })
}

/// A fresh repository after a failed attempt, so nothing it wrote (a shallow file, a partial
/// pack) can leak into the next one.
fn reinit(
    req: &GitRequest<'_>,
    git_dir: &Path,
    overrides: &[&str],
) -> Result<gix::Repository, FetchError> {
    std::fs::remove_dir_all(git_dir).map_err(|e| error::io(req, git_dir.to_path_buf(), e))?;
    init(req, git_dir, overrides)
}

/// A failed attempt: its kind decides the error variant (and whether to fall back).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
    pub(crate) detail: String,
}

impl Failure {
    fn from_gix(e: gix::Error) -> Failure {
        Failure {
            kind: error::classify(&e),
            detail: error::describe(&e),
        }
    }

    fn into_error(self, req: &GitRequest<'_>) -> FetchError {
        let kind = match self.kind {
            // Only the commit-id path treats a refused want specially.
            Kind::WantRefused => Kind::RevisionNotFound,
            other => other,
        };
        error::git(req, kind, self.detail)
    }
}

/// The remote to fetch `specs` from (its fetch refspecs, so the server is asked for exactly
/// those refs), with no tags besides them.
fn remote<'r>(
    repo: &'r gix::Repository,
    url: &gix::Url,
    specs: &[&str],
) -> Result<gix::Remote<'r>, Failure> {
    repo.remote_at(url.clone())
        .map_err(Failure::from_gix)?
        .with_fetch_tags(Tags::None)
        .with_refspecs(specs.iter().copied(), Direction::Fetch)
        .map_err(|e| Failure {
            kind: Kind::RevisionNotFound,
            detail: format!(
                "not a valid branch, tag or reference name ({})",
                error::describe(&e)
            ),
        })
}

/// A connection to `remote` whose only source of credentials is the request: no helpers, no
/// prompt. A `None` answer makes gix fail the handshake as unauthenticated.
fn connect<'a, 'r>(
    req: &GitRequest<'_>,
    remote: &'a gix::Remote<'r>,
    url: &gix::Url,
) -> Result<gix::remote::Connection<'a, 'static, 'r, Transport>, Failure> {
    let credentials = req.credentials.clone();
    let host = url.host().map(str::to_ascii_lowercase);
    let connection = remote
        .connect(Direction::Fetch)
        .map_err(Failure::from_gix)?;
    Ok(connection.with_credentials(move |action| {
        Ok(match action {
            Action::Get(context) => credentials
                .as_ref()
                .filter(|_| same_host(context.url.as_ref(), host.as_deref()))
                .map(|auth| answer(auth, context)),
            // Nothing is stored or forgotten: the credentials live in the request only.
            Action::Store(_) | Action::Erase(_) => None,
        })
    }))
}

type Transport = Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>;

/// Whether a credentials request (after any redirect) is for the host the user gave the
/// credentials for: they are not handed to another host a server redirects to.
fn same_host(asked: Option<&gix::bstr::BString>, host: Option<&str>) -> bool {
    let asked = asked.and_then(|u| gix::url::parse(gix::bstr::BStr::new(u.as_slice())).ok());
    match (asked.as_ref().and_then(gix::Url::host), host) {
        (Some(asked), Some(host)) => asked.eq_ignore_ascii_case(host),
        _ => false,
    }
}

fn answer(auth: &BasicAuth, context: gix::credentials::protocol::Context) -> CredentialsOutcome {
    CredentialsOutcome {
        credentials: gix::sec::identity::Credentials::UsernamePassword {
            username: auth.username.clone(),
            password: auth.password.clone(),
            oauth_refresh_token: None,
        },
        next: context.into(),
    }
}

/// Asks the server for `target` and receives it at depth 1; returns the id the chosen ref
/// (or the commit id itself) names.
fn fetch_target(
    req: &GitRequest<'_>,
    repo: &gix::Repository,
    url: &gix::Url,
    target: &Target,
    interrupt: &AtomicBool,
) -> Result<gix::ObjectId, Failure> {
    let specs = target.refspecs()?;
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let remote = remote(repo, url, &specs)?;
    let prepare = connect(req, &remote, url)?
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(Failure::from_gix)?;
    let id = choose(prepare.ref_map(), target)?;
    prepare
        .with_shallow(Shallow::DepthAtRemote(NonZeroU32::MIN))
        .receive(gix::progress::Discard, interrupt)
        .map_err(|e| {
            // A local upload-pack that refuses a want exits before we read its error line;
            // the caller asks the server what it serves before calling it "not found".
            let hung_up = matches!(target, Target::Commit(_)) && error::closed_by_server(&e);
            let mut failure = Failure::from_gix(e);
            if hung_up {
                failure.kind = Kind::WantRefused;
            }
            failure
        })?;
    Ok(id)
}

/// The object the target names among the refs the server listed.
fn choose(refs: &gix::remote::fetch::RefMap, target: &Target) -> Result<gix::ObjectId, Failure> {
    let named = |name: &str| {
        refs.mappings
            .iter()
            .find(|m| m.remote.as_name().is_some_and(|n| n == name))
    };
    let not_found = |detail: &str| Failure {
        kind: Kind::RevisionNotFound,
        detail: detail.to_string(),
    };
    let mapping = match target {
        Target::Commit(id) => return Ok(*id),
        Target::DefaultBranch => {
            named("HEAD").ok_or_else(|| not_found("the server lists no HEAD"))?
        }
        Target::FullRef(name) => {
            named(name).ok_or_else(|| not_found("the server has no such reference"))?
        }
        Target::Name(name) => named(&format!("refs/heads/{name}"))
            .or_else(|| named(&format!("refs/tags/{name}")))
            .ok_or_else(|| not_found("the server has no branch or tag of that name"))?,
    };
    mapping
        .remote
        .as_id()
        .map(ToOwned::to_owned)
        .ok_or_else(|| not_found("it names no commit yet (an empty repository?)"))
}

/// Whether the server hands out any commit it has by id (protocol v2, or a v0/v1 server that
/// allows reachable or any ids), so that refusing one means it does not have it.
fn serves_any_commit(
    req: &GitRequest<'_>,
    repo: &gix::Repository,
    url: &gix::Url,
) -> Result<bool, FetchError> {
    let remote = remote(repo, url, &["HEAD"]).map_err(|e| e.into_error(req))?;
    let (_, handshake) = connect(req, &remote, url)
        .and_then(|c| {
            c.ref_map(gix::progress::Discard, Default::default())
                .map_err(Failure::from_gix)
        })
        .map_err(|e| e.into_error(req))?;
    let capabilities = &handshake.capabilities;
    Ok(
        handshake.server_protocol_version == gix::protocol::transport::Protocol::V2
            || capabilities.contains("allow-reachable-sha1-in-want")
            || capabilities.contains("allow-any-sha1-in-want"),
    )
}

/// Checks the commit `id` names (peeling an annotated tag) out into `tree`.
fn checkout(
    req: &GitRequest<'_>,
    repo: gix::Repository,
    id: gix::ObjectId,
    tree: &Path,
    interrupt: &AtomicBool,
) -> Result<(Fetched, gix::Repository), FetchError> {
    let failed = |e: gix::Error| error::git(req, Kind::Failed, error::describe(&e));
    let (commit, tree_id) = {
        let commit = repo
            .find_object(id)
            .map_err(failed)?
            .peel_to_commit()
            .map_err(|e| {
                error::git(
                    req,
                    Kind::RevisionNotFound,
                    format!(
                        "{id} is not a commit or a tag of one ({})",
                        error::describe(&e)
                    ),
                )
            })?;
        (commit.id, commit.tree_id().map_err(failed)?.detach())
    };
    let mut index = repo.index_from_tree(&tree_id).map_err(failed)?;
    let mut options = repo
        .checkout_options(gix::worktree::stack::state::attributes::Source::IdMapping)
        .map_err(failed)?;
    options.destination_is_initially_empty = true;
    let objects = repo.objects.clone().into_arc().map_err(|e| {
        error::git(
            req,
            Kind::Failed,
            format!("cannot share the object database: {e}"),
        )
    })?;
    let outcome = gix::worktree::state::checkout(
        &mut index,
        tree,
        objects,
        &gix::progress::Discard,
        &gix::progress::Discard,
        interrupt,
        options,
    )
    .map_err(failed)?;
    if let Some(record) = outcome.errors.first() {
        return Err(error::git(
            req,
            Kind::Failed,
            format!(
                "checking out {}: {}",
                record.path,
                error::describe(&record.error)
            ),
        ));
    }
    if let Some(collision) = outcome.collisions.first() {
        return Err(error::git(
            req,
            Kind::Failed,
            format!(
                "checking out {}: it collides with another path on this file system",
                collision.path
            ),
        ));
    }
    let commit = commit.to_string();
    let shallow = repo.is_shallow().map_err(failed)?;
    Ok((Fetched { commit, shallow }, repo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn revisions_are_sorted_into_kinds() {
        let id = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(Target::of(None), Target::DefaultBranch);
        assert_eq!(Target::of(Some(" HEAD ")), Target::DefaultBranch);
        assert_eq!(
            Target::of(Some(id)),
            Target::Commit(gix::ObjectId::from_hex(id.to_ascii_lowercase().as_bytes()).unwrap())
        );
        assert_eq!(
            Target::of(Some("refs/pull/1/head")),
            Target::FullRef("refs/pull/1/head".to_string())
        );
        // Not 40 hex digits: a name.
        assert_eq!(
            Target::of(Some(&id[..39])),
            Target::Name(id[..39].to_string())
        );
        assert_eq!(
            Target::of(Some("v1.0")).refspecs().unwrap(),
            ["refs/heads/v1.0", "refs/tags/v1.0"]
        );
        // Nothing that would turn the refspec into something else.
        for bad in [
            "main:refs/heads/x",
            "feat*",
            "a..b",
            "a b",
            "refs/heads/x:y",
        ] {
            let failure = Target::of(Some(bad)).refspecs().unwrap_err();
            assert_eq!(failure.kind, Kind::RevisionNotFound, "{bad}");
        }
    }

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

    /// A repository with three commits on `main`; returns their ids, oldest first.
    fn three_commits(dir: &Path) -> Vec<gix::ObjectId> {
        git(dir, &["init", "-q", "-b", "main"]);
        (0..3)
            .map(|i| {
                std::fs::write(dir.join("n"), format!("{i}\n")).unwrap();
                git(dir, &["add", "n"]);
                git(dir, &["commit", "-q", "-m", &format!("c{i}")]);
                gix::ObjectId::from_hex(git(dir, &["rev-parse", "HEAD"]).as_bytes()).unwrap()
            })
            .collect()
    }

    fn fetch_with(
        scratch: &Path,
        name: &str,
        url: &str,
        revision: Option<&str>,
        overrides: &[&str],
    ) -> Result<(Fetched, gix::Repository), FetchError> {
        let (git_dir, tree) = (scratch.join(format!("{name}.git")), scratch.join(name));
        std::fs::create_dir(&tree).unwrap();
        let req = GitRequest {
            url,
            revision,
            credentials: None,
        };
        fetch_into(&req, git_dir, tree, overrides)
    }

    #[test]
    fn depth_one_fetches_lack_the_parent_commits() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        let commits = three_commits(&origin);
        let url = format!("file://{}", origin.display());
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();

        let (fetched, repo) = fetch_with(&scratch, "head", &url, None, &[]).unwrap();
        assert_eq!(fetched.commit, commits[2].to_string());
        assert!(fetched.shallow);
        assert!(repo.has_object(commits[2]) && !repo.has_object(commits[1]));

        // A commit that no ref points at, by id over protocol v2: still depth 1.
        let middle = commits[1].to_string();
        let (fetched, repo) = fetch_with(&scratch, "middle", &url, Some(&middle), &[]).unwrap();
        assert_eq!(fetched.commit, middle);
        assert!(fetched.shallow);
        assert!(repo.has_object(commits[1]) && !repo.has_object(commits[0]));
    }

    #[test]
    fn a_v1_server_refusing_unadvertised_commits_gets_a_full_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        let commits = three_commits(&origin);
        let url = format!("file://{}", origin.display());
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let v1 = ["protocol.version=1"];

        let middle = commits[1].to_string();
        let (fetched, repo) = fetch_with(&scratch, "middle", &url, Some(&middle), &v1).unwrap();
        assert_eq!(fetched.commit, middle);
        assert!(!fetched.shallow);
        assert!(repo.has_object(commits[0]));
        assert_eq!(
            std::fs::read_to_string(scratch.join("middle/n")).unwrap(),
            "1\n"
        );

        // A branch over v1: the right commit, but not shallow. gix 0.91 asks a v0/v1 server
        // for every capability it offers, `deepen-relative` included, so `deepen 1` counts
        // from our (empty) shallow boundary and the server sends the whole history. When
        // this fails after a gix upgrade, v1 fetches became shallow: update the module docs.
        let (fetched, repo) = fetch_with(&scratch, "main", &url, Some("main"), &v1).unwrap();
        assert_eq!(fetched.commit, commits[2].to_string());
        assert!(!fetched.shallow && repo.has_object(commits[0]));

        let missing = "0123456789abcdef0123456789abcdef01234567";
        let e = fetch_with(&scratch, "missing", &url, Some(missing), &v1).unwrap_err();
        assert_eq!(e.reason(), "GitRevisionNotFound", "{e}");
        assert!(e.to_string().contains("no branch or tag"), "{e}");
    }
}
