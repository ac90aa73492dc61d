//! User and group lookup in a stage's root filesystem (`/etc/passwd`, `/etc/group`, read as
//! if chrooted), for `COPY --chown`, `ADD --chown` and, later, `USER` before a RUN. Numeric
//! ids need no files; names that are not found are errors, as in BuildKit.

use std::path::Path;

use crate::rootpath;

/// Errors resolving users and groups.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such user name in the root's `/etc/passwd`.
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UnknownUser {
        /// The user name.
        name: String,
    },
    /// No such group name in the root's `/etc/group`.
    #[error("unable to find group {name}: no matching entries in group file")]
    UnknownGroup {
        /// The group name.
        name: String,
    },
    /// An empty user or group.
    #[error("invalid user specification {spec:?}")]
    Invalid {
        /// The specification as given.
        spec: String,
    },
    /// The file exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file inside the root.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Resolving the file's path inside the root failed.
    #[error(transparent)]
    Resolve(#[from] rootpath::RootPathError),
}

/// A numeric owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// A user as a process would run: ids plus supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (groups listing the user by name), ascending.
    pub additional_gids: Vec<u32>,
}

/// Reads `/etc/<name>` from the root; a missing file reads as empty, since a `FROM scratch`
/// stage has none and numeric ids must still work there.
fn read_db(root: &Path, name: &str) -> Result<String, UserError> {
    let resolved = rootpath::resolve(root, &format!("/etc/{name}"), true)?;
    match std::fs::read(&resolved.path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UserError::Read {
            path: format!("/etc/{name}"),
            source,
        }),
    }
}

/// Rows of a colon-separated database, comments and malformed rows skipped.
fn rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
}

/// `(uid, gid)` of a passwd entry named `name`.
fn passwd_entry(root: &Path, name: &str) -> Result<Option<(u32, u32)>, UserError> {
    let text = read_db(root, "passwd")?;
    for row in rows(&text) {
        if row.len() >= 4
            && row[0] == name
            && let (Ok(uid), Ok(gid)) = (row[2].parse(), row[3].parse())
        {
            return Ok(Some((uid, gid)));
        }
    }
    Ok(None)
}

/// The gid of a group given by name or number.
pub fn lookup_group(root: &Path, group: &str) -> Result<u32, UserError> {
    if group.is_empty() {
        return Err(UserError::Invalid {
            spec: group.to_string(),
        });
    }
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let text = read_db(root, "group")?;
    rows(&text)
        .find(|row| row.len() >= 3 && row[0] == group)
        .and_then(|row| row[2].parse().ok())
        .ok_or_else(|| UserError::UnknownGroup {
            name: group.to_string(),
        })
}

/// Resolves a `--chown` value (`user`, `user:group`, numeric or by name) as BuildKit does: a
/// user name gives its passwd uid and primary gid, a numeric user with no group uses the
/// same number as gid, a group name or number overrides the gid.
pub fn resolve_chown(root: &Path, spec: &str) -> Result<Owner, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(UserError::Invalid {
            spec: spec.to_string(),
        });
    }
    let (uid, mut gid) = match user.parse::<u32>() {
        Ok(id) => (id, id),
        Err(_) => passwd_entry(root, user)?.ok_or_else(|| UserError::UnknownUser {
            name: user.to_string(),
        })?,
    };
    if let Some(group) = group {
        gid = lookup_group(root, group)?;
    }
    Ok(Owner { uid, gid })
}

/// The home directory a process of `uid` gets as `HOME` when the image sets none: its
/// passwd entry's, else `/`. runc does the same for a container, so a RUN sees the same
/// `HOME` in a builder pod as under runc (Go, npm and pip need one).
pub fn home_dir(root: &Path, uid: u32) -> Result<String, UserError> {
    let passwd = read_db(root, "passwd")?;
    Ok(rows(&passwd)
        .find(|r| r.len() >= 6 && r[2].parse() == Ok(uid) && !r[5].is_empty())
        .map_or_else(|| "/".to_string(), |r| r[5].to_string()))
}

/// Resolves a `USER` value for running a process: like Docker, a numeric uid not in passwd
/// is allowed (gid 0 then), a name must exist, and supplementary groups come from
/// `/etc/group` memberships unless a group was given explicitly.
pub fn resolve_process_user(root: &Path, spec: &str) -> Result<ProcessUser, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(UserError::Invalid {
            spec: spec.to_string(),
        });
    }
    let passwd = read_db(root, "passwd")?;
    let by_name = rows(&passwd).find(|r| r.len() >= 4 && r[0] == user);
    let (uid, gid, name) = match (user.parse::<u32>(), by_name) {
        (Ok(uid), _) => {
            let entry = rows(&passwd).find(|r| r.len() >= 4 && r[2].parse() == Ok(uid));
            let gid = entry.as_ref().and_then(|r| r[3].parse().ok()).unwrap_or(0);
            (uid, gid, entry.map(|r| r[0].to_string()))
        }
        (Err(_), Some(row)) => match (row[2].parse(), row[3].parse()) {
            (Ok(uid), Ok(gid)) => (uid, gid, Some(user.to_string())),
            _ => {
                return Err(UserError::UnknownUser {
                    name: user.to_string(),
                });
            }
        },
        (Err(_), None) => {
            return Err(UserError::UnknownUser {
                name: user.to_string(),
            });
        }
    };
    if let Some(group) = group {
        return Ok(ProcessUser {
            uid,
            gid: lookup_group(root, group)?,
            additional_gids: Vec::new(),
        });
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        let groups = read_db(root, "group")?;
        for row in rows(&groups) {
            if row.len() >= 4
                && row[3].split(',').any(|m| m.trim() == name)
                && let Ok(g) = row[2].parse::<u32>()
                && g != gid
            {
                additional_gids.push(g);
            }
        }
    }
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ProcessUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nstaff:x:50:app,other\nwheel:x:10:root\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn home_from_passwd_or_root_dir() {
        let r = rootfs();
        assert_eq!(home_dir(r.path(), 0).unwrap(), "/root");
        assert_eq!(home_dir(r.path(), 1000).unwrap(), "/home/app");
        assert_eq!(home_dir(r.path(), 4242).unwrap(), "/");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(home_dir(empty.path(), 0).unwrap(), "/");
    }

    #[test]
    fn chown_forms() {
        let r = rootfs();
        let o = |s| resolve_chown(r.path(), s).unwrap();
        assert_eq!(
            o("app"),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(o("10"), Owner { uid: 10, gid: 10 });
        assert_eq!(o("app:staff"), Owner { uid: 1000, gid: 50 });
        assert_eq!(o("5:7"), Owner { uid: 5, gid: 7 });
        assert_eq!(o("0:app"), Owner { uid: 0, gid: 1001 });
        let e = resolve_chown(r.path(), "nobody").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert!(matches!(
            resolve_chown(r.path(), "app:nogroup"),
            Err(UserError::UnknownGroup { .. })
        ));
        assert!(resolve_chown(r.path(), ":5").is_err());
    }

    #[test]
    fn scratch_has_numeric_ids_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_chown(dir.path(), "1:2").unwrap(),
            Owner { uid: 1, gid: 2 }
        );
        assert!(resolve_chown(dir.path(), "app").is_err());
    }

    #[test]
    fn passwd_symlink_stays_in_root() {
        let r = rootfs();
        std::fs::rename(
            r.path().join("etc/passwd"),
            r.path().join("etc/passwd.real"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", r.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve_chown(r.path(), "app").unwrap().uid, 1000);
    }

    #[test]
    fn process_users() {
        let r = rootfs();
        let u = resolve_process_user(r.path(), "app").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 1001, vec![50]));
        let u = resolve_process_user(r.path(), "0").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (0, 0, vec![10]));
        let u = resolve_process_user(r.path(), "4242").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        let u = resolve_process_user(r.path(), "app:wheel").unwrap();
        assert_eq!((u.gid, u.additional_gids.len()), (10, 0));
        assert!(resolve_process_user(r.path(), "ghost").is_err());
    }
}
