//! `.dockerignore` text and the pattern matcher BuildKit applies to it (moby's
//! `patternmatcher`): patterns are cleaned paths relative to the context root, `!` marks an
//! exception, the last pattern that matches a path decides, and a pattern that matches a
//! parent directory matches everything under it. The same matcher serves `COPY --exclude`.
//! Pure: reading the file is the builder's (`stagecoach_builder::dockerignore`).

use crate::pattern::{self, Flavor, Glob, PatternError};

/// Errors compiling ignore patterns.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    /// A lone `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// A pattern that does not compile.
    #[error(transparent)]
    Pattern(#[from] PatternError),
}

/// Reads `.dockerignore` text into patterns the way BuildKit does: a UTF-8 BOM dropped,
/// lines trimmed, `#` comment lines and blank lines skipped, each pattern path-cleaned with
/// a leading `/` removed (so `/foo`, `./foo` and `foo` mean the same), `!` kept in front.
pub fn parse(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut pattern = line.trim();
        if pattern.is_empty() || pattern.starts_with('#') {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = pattern::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        out.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    out
}

#[derive(Debug, Clone)]
struct Rule {
    glob: Glob,
    /// Set for `**` followed only by literal text: moby then compares string suffixes
    /// instead of using its regex, so `**file` also matches `xfile`.
    suffix: Option<String>,
    exclusion: bool,
}

impl Rule {
    fn matches(&self, path: &str) -> bool {
        match &self.suffix {
            Some(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| s == path)
            }
            None => self.glob.matches(path),
        }
    }
}

/// A compiled list of patterns.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    rules: Vec<Rule>,
}

impl PatternMatcher {
    /// Compiles patterns as written in `.dockerignore` order (already [`parse`]d, or raw:
    /// each is trimmed and cleaned again, which is harmless).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, MatcherError> {
        let mut rules = Vec::new();
        for raw in patterns {
            let trimmed = raw.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = pattern::clean(trimmed);
            let (exclusion, body) = match cleaned.strip_prefix('!') {
                Some("") => return Err(MatcherError::IllegalExclusion),
                Some(rest) => (true, rest),
                None => (false, cleaned.as_str()),
            };
            let suffix = body
                .strip_prefix("**")
                .filter(|rest| !rest.contains(['*', '?', '[', ']', '\\']))
                .map(str::to_string);
            rules.push(Rule {
                glob: Glob::new(body, Flavor::Path)?,
                suffix,
                exclusion,
            });
        }
        Ok(Self { rules })
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any pattern is an exception, so that an excluded directory may still hold
    /// included files and must be walked.
    pub fn has_exclusions(&self) -> bool {
        self.rules.iter().any(|r| r.exclusion)
    }

    /// Whether `path` (relative to the context root, '/'-separated) is excluded: the last
    /// pattern matching it or one of its parent directories decides.
    pub fn matches(&self, path: &str) -> bool {
        let path = pattern::clean(path.trim_start_matches('/'));
        let parent = match path.rfind('/') {
            Some(i) => &path[..i],
            None => ".",
        };
        let parents: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for rule in &self.rules {
            // An inclusion cannot change an already excluded path, nor an exception a path
            // nothing excluded; skipping them is what makes "last match wins" cheap.
            if rule.exclusion != matched {
                continue;
            }
            let mut hit = rule.matches(&path);
            if !hit && parent != "." {
                let mut prefix = String::new();
                for dir in &parents {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(dir);
                    if rule.matches(&prefix) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !rule.exclusion;
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(patterns: &str) -> PatternMatcher {
        PatternMatcher::new(&parse(patterns)).unwrap()
    }

    #[test]
    fn parse_cleans_and_skips() {
        let text = "\u{feff}# comment\n\n  /foo/bar/  \n./baz\n! /keep/./me\n*/temp*\n  #not a comment? no: trimmed first\n";
        assert_eq!(
            parse(text),
            vec!["foo/bar", "baz", "!keep/me", "*/temp*"],
            "a line whose trimmed text starts with # is a comment"
        );
        assert_eq!(parse("/\n"), vec!["/"]);
        assert_eq!(parse("!\n"), vec!["!"]);
        assert!(matches!(
            PatternMatcher::new(&parse("!\n")),
            Err(MatcherError::IllegalExclusion)
        ));
    }

    #[test]
    fn documented_examples() {
        // The examples of Docker's .dockerignore documentation.
        let m = pm("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(m.matches("somedir/temporary.txt"));
        assert!(m.matches("somedir/temp"));
        assert!(!m.matches("temporary.txt"), "*/temp* needs one directory");
        assert!(m.matches("somedir/subdir/temporary.txt"));
        assert!(m.matches("tempa"));
        assert!(!m.matches("tempab"));
        assert!(
            m.matches("tempb/anything"),
            "a matched directory excludes its contents"
        );

        let m = pm("**/*.go\n");
        assert!(m.matches("main.go"));
        assert!(m.matches("cmd/x/main.go"));

        let m = pm("*.md\n!README.md\n");
        assert!(m.matches("CHANGES.md"));
        assert!(!m.matches("README.md"));

        let m = pm("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(m.matches("README-secret.md"));
        assert!(!m.matches("README-public.md"));
        assert!(m.matches("other.md"));

        let m = pm("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!m.matches("README-secret.md"), "the later exception wins");
    }

    #[test]
    fn parents_and_exceptions() {
        let m = pm("node_modules\n");
        assert!(m.matches("node_modules"));
        assert!(m.matches("node_modules/a/b.js"));
        assert!(
            !m.matches("src/node_modules/a.js"),
            "patterns are anchored at the root"
        );

        let m = pm("docs\n!docs/keep.md\n");
        assert!(m.matches("docs/a.md"));
        assert!(!m.matches("docs/keep.md"));
        assert!(m.matches("docs"), "the directory itself stays excluded");
        assert!(m.has_exclusions());

        // An exception cannot re-include below a directory excluded by a later pattern.
        let m = pm("!docs/keep.md\ndocs\n");
        assert!(m.matches("docs/keep.md"));
    }

    /// Behaviour of moby's matcher (`MatchesOrParentMatches`) on single patterns, including
    /// its string-suffix shortcut for `**` followed by literal text.
    #[test]
    fn moby_matcher_behaviour() {
        let cases: &[(&str, &str, bool)] = &[
            ("**", "file", true),
            ("**", "dir/file", true),
            ("**/", "file", true),
            ("**/**", "dir/file", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/dir2/file", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir", "adir", false),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**file", "dir/xfile", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("**.foo", "bar.foo", true),
            ("a(b)c/def", "a(b)c/def", true),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("a\\\\", "a\\", true),
            ("a\\*b", "a*b", true),
        ];
        for (pattern, path, want) in cases {
            let m = PatternMatcher::new(&[*pattern]).unwrap();
            assert_eq!(m.matches(path), *want, "pattern {pattern:?} path {path:?}");
        }
        let m = PatternMatcher::new(&["**", "!util/docker/web"]).unwrap();
        assert!(!m.matches("util/docker/web/foo"));
        let m = PatternMatcher::new(&["**", "!util/docker/web", "util/docker/web/foo"]).unwrap();
        assert!(m.matches("util/docker/web/foo"));
        let m = PatternMatcher::new(&["**", "!dist/*.whl"]).unwrap();
        assert!(!m.matches("dist/x-1.0-py3-none-any.whl"));
        for bad in ["[", "[^bc", "a[", "[]a]", "[-]", "[x-]", "\\", "[a-b-c]"] {
            assert!(PatternMatcher::new(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn tricky_patterns() {
        let m = pm("a/**\n");
        assert!(!m.matches("a"));
        assert!(m.matches("a/b"));
        let m = pm("**\n!src\n");
        assert!(m.matches("Dockerfile"));
        assert!(!m.matches("src"));
        assert!(
            !m.matches("src/x.rs"),
            "an exception matching a parent re-includes what is below it"
        );
        let m = pm("**\n!src\n!src/**\n");
        assert!(!m.matches("src/x/y.rs"));
        let m = pm("[ab].txt\n\\*.log\nfile?\n");
        assert!(m.matches("a.txt") && !m.matches("c.txt"));
        assert!(m.matches("*.log") && !m.matches("x.log"));
        assert!(m.matches("filea/x"));
        assert!(!m.matches("file"));
        let m = pm("./build/../dist\n");
        assert!(m.matches("dist/x"));
        let m = pm("**/.git\n");
        assert!(m.matches(".git/config"));
        assert!(m.matches("sub/.git/HEAD"));
        assert!(PatternMatcher::new(&["[a"]).is_err());
        assert!(!pm("").matches("anything"));
    }
}
