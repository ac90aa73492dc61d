//! The one glob engine behind `.dockerignore`, `--exclude` and wildcard COPY/ADD sources.
//! Two flavours share it: [`Flavor::Component`] is Go's `filepath.Match` on one path
//! component (what BuildKit uses for wildcard sources), [`Flavor::Path`] is moby's
//! patternmatcher, where `**` spans directories. Patterns compile to a token list that is
//! matched by simulating the automaton over the input, so no pattern can make matching
//! exponential, and no regex engine is needed.

/// Which glob dialect a pattern is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Go `filepath.Match`: `**` is two `*`, neither crosses a `/`.
    Component,
    /// moby patternmatcher: `**` matches any number of directories (even none).
    Path,
}

/// A malformed pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern cannot be compiled (Go's `ErrBadPattern`).
    #[error("syntax error in pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    AnyOne,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `[...]`: Go's class, which (unlike `?`) may match a `/`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**/` or a `**` inside the pattern: nothing, or anything that ends with `/`.
    AnyDirs,
    /// A trailing `**`: anything at all.
    AnyRest,
}

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
}

/// Whether `s` contains a character that makes it a pattern rather than a literal path.
pub fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

impl Glob {
    /// Compiles `pattern` in the given flavour.
    pub fn new(pattern: &str, flavor: Flavor) -> Result<Self, PatternError> {
        let bad = |reason| PatternError::BadPattern {
            pattern: pattern.to_string(),
            reason,
        };
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            i += 1;
            match c {
                '*' if flavor == Flavor::Path && chars.get(i) == Some(&'*') => {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    tokens.push(if i == chars.len() {
                        Token::AnyRest
                    } else {
                        Token::AnyDirs
                    });
                }
                '*' => {
                    // Consecutive stars mean the same as one and would only add states.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::AnyOne),
                '\\' => {
                    let Some(&next) = chars.get(i) else {
                        return Err(bad("trailing backslash"));
                    };
                    i += 1;
                    tokens.push(Token::Literal(next));
                }
                '[' => {
                    let (token, next) = parse_class(&chars, i).ok_or_else(|| {
                        bad("malformed character class (unterminated '[' or bad range)")
                    })?;
                    tokens.push(token);
                    i = next;
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Self {
            text: pattern.to_string(),
            tokens,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole of `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        let n = self.tokens.len();
        // State (p, inner): about to match token p; `inner` means inside an AnyDirs group that
        // has consumed at least one character and still needs a '/' to finish.
        let index = |p: usize, inner: bool| p * 2 + usize::from(inner);
        let mut current = vec![false; (n + 1) * 2];
        current[index(0, false)] = true;
        self.close(&mut current);
        for c in s.chars() {
            let mut next = vec![false; (n + 1) * 2];
            let mut any = false;
            for p in 0..=n {
                if current[index(p, true)] {
                    next[index(p, true)] = true;
                    if c == '/' {
                        next[index(p + 1, false)] = true;
                    }
                    any = true;
                }
                if !current[index(p, false)] {
                    continue;
                }
                let Some(token) = self.tokens.get(p) else {
                    continue;
                };
                let mut advance = |q: usize, inner: bool| {
                    next[index(q, inner)] = true;
                    any = true;
                };
                match token {
                    Token::Literal(l) if *l == c => advance(p + 1, false),
                    Token::Literal(_) => {}
                    Token::AnyOne if c != '/' => advance(p + 1, false),
                    Token::AnyOne => {}
                    Token::Star if c != '/' => advance(p, false),
                    Token::Star => {}
                    Token::Class { negated, ranges } => {
                        let inside = ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
                        if inside != *negated {
                            advance(p + 1, false);
                        }
                    }
                    Token::AnyDirs => {
                        if c == '/' {
                            advance(p + 1, false);
                        }
                        advance(p, true);
                    }
                    Token::AnyRest => advance(p, false),
                }
            }
            if !any {
                return false;
            }
            self.close(&mut next);
            current = next;
        }
        current[index(n, false)]
    }

    /// Adds the states reachable without consuming input (tokens that may match nothing).
    fn close(&self, states: &mut [bool]) {
        for p in 0..self.tokens.len() {
            if states[p * 2]
                && matches!(
                    self.tokens[p],
                    Token::Star | Token::AnyDirs | Token::AnyRest
                )
            {
                states[(p + 1) * 2] = true;
            }
        }
    }
}

/// Reads a class body starting after its `[`, with Go's rules: optional `^`, then at least
/// one item, each a character or a range `lo-hi`, `\` escaping; an unescaped `-` or `]`
/// where a character is expected is malformed. Returns the token and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        let (lo, next) = class_char(chars, i)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (h, next) = class_char(chars, i + 1)?;
            hi = h;
            i = next;
            if hi < lo {
                return None;
            }
        }
        ranges.push((lo, hi));
    }
}

fn class_char(chars: &[char], i: usize) -> Option<(char, usize)> {
    match chars.get(i)? {
        '-' | ']' => None,
        '\\' => chars.get(i + 1).map(|c| (*c, i + 2)),
        c => Some((*c, i + 1)),
    }
}

/// Go's `path.Clean` for '/'-separated paths: no empty, `.` or resolvable `..` components,
/// no trailing slash; `..` at the root of an absolute path is dropped; `""` becomes `"."`.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, flavor: Flavor, s: &str) -> bool {
        Glob::new(pattern, flavor).unwrap().matches(s)
    }

    #[test]
    fn go_filepath_match_cases() {
        // Cases from the behaviour Go documents for filepath.Match.
        let c = Flavor::Component;
        assert!(m("abc", c, "abc"));
        assert!(m("*", c, "abc"));
        assert!(m("*c", c, "abc"));
        assert!(!m("a*", c, "ab/c"));
        assert!(m("a*/b", c, "abc/b"));
        assert!(!m("a*/b", c, "a/c/b"));
        assert!(m("a*b*c*d*e*/f", c, "axbxcxdxe/f"));
        assert!(!m("a*b*c*d*e*/f", c, "axbxcxdxexxx/fff"));
        assert!(m("ab[c]", c, "abc"));
        assert!(m("ab[b-d]", c, "abc"));
        assert!(!m("ab[e-g]", c, "abc"));
        assert!(!m("ab[^c]", c, "abc"));
        assert!(m("ab[^e-g]", c, "abc"));
        assert!(m("a\\*b", c, "a*b"));
        assert!(!m("a\\*b", c, "ab"));
        assert!(m("a?b", c, "a☺b"));
        assert!(m("a[^a]b", c, "a☺b"));
        assert!(!m("a???b", c, "a☺b"));
        assert!(m("[\\]a]", c, "]"));
        assert!(m("[\\-]", c, "-"));
        assert!(m("[x\\-]", c, "x"));
        assert!(!m("a?b", c, "a/b"));
        assert!(!m("**", c, "a/b"));
        assert!(m("*x", c, "xxx"));
    }

    #[test]
    fn bad_patterns() {
        for p in [
            "[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[a-b-c]", "\\", "[z-a]",
        ] {
            assert!(Glob::new(p, Flavor::Component).is_err(), "{p}");
        }
    }

    #[test]
    fn double_star_spans_directories() {
        let p = Flavor::Path;
        assert!(m("**/*.go", p, "a.go"));
        assert!(m("**/*.go", p, "x/y/a.go"));
        assert!(m("**", p, "x/y/z"));
        assert!(m("a/**", p, "a/b/c"));
        assert!(!m("a/**", p, "a"));
        assert!(m("a/**/b", p, "a/b"));
        assert!(m("a/**/b", p, "a/x/y/b"));
        assert!(!m("a/**/b", p, "a/xb"));
        assert!(m("a**b", p, "ab"));
        assert!(m("a**b", p, "ax/b"));
        assert!(!m("a**b", p, "axb"));
        assert!(!m("*", p, "a/b"));
    }

    #[test]
    fn clean_like_go() {
        assert_eq!(clean(""), ".");
        assert_eq!(clean("./a/../b/"), "b");
        assert_eq!(clean("/../x"), "/x");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("a//b/./c/.."), "a/b");
        assert_eq!(clean("/"), "/");
    }
}
