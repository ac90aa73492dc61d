//! Shell-word expansion as BuildKit's Dockerfile frontend performs it on ARG, ENV, FROM,
//! COPY, ADD, WORKDIR and the other instructions that expand variables (never on RUN, whose
//! text goes to the shell untouched).
//!
//! The rules follow BuildKit's `frontend/dockerfile/shell` lexer rather than POSIX `sh`, quirks
//! included, because the same Dockerfile must expand to the same values under both:
//!
//! * Every `${…}` form is evaluated eagerly while it is read, so a variable named only in an
//!   alternative that is not taken (`${SET:-$OTHER}`) is still looked up, recorded in
//!   [`Expanded::unmatched`] and can still fail the expansion.
//! * Inside `${VAR#…}`, `${VAR%…}` and `${VAR/…/…}` escape characters are kept, because the
//!   pattern language has its own `\` escapes (always backslash, whatever the escape
//!   directive says).
//! * Patterns know `*` and `?` only (no bracket expressions), and neither matches a newline.
//! * In `${VAR//pattern/replacement}` a `$0` or `${0}` in the replacement stands for the matched
//!   text and any other `$name` for nothing (`$$` is a `$`); `${VAR/pattern/replacement}`
//!   inserts the replacement literally.
//! * Field splitting ([`ShellLex::process_words`]) splits unquoted text and everything a `$`
//!   expression produced outside double quotes, even the quoted parts of `${VAR:-"a b"}`; an
//!   empty field (`""`) is dropped.
//! * Environment keys compare case-sensitively, as BuildKit does on Unix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

/// Where variable values come from during expansion.
pub trait Env {
    /// The value of `name`, or `None` when it is not set. An empty value is "set".
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// An ordered list of assignments, as ENV and ARG build them up: the last one with a name wins.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// The result of expanding one word.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expanded {
    /// The expanded text.
    pub value: String,
    /// Names of variables that were referenced and set.
    pub matched: BTreeSet<String>,
    /// Names of variables that were referenced but not set.
    pub unmatched: BTreeSet<String>,
}

/// Errors from expansion. Each names the whole word it came from and reads like BuildKit's
/// message (`failed to process "…": …`); the caller adds the Dockerfile line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// A `'` without its closing `'`.
    #[error(
        "failed to process {word:?}: unexpected end of statement while looking for matching \
         single-quote"
    )]
    UnterminatedSingleQuote {
        /// The word being expanded.
        word: String,
    },
    /// A `"` without its closing `"`.
    #[error(
        "failed to process {word:?}: unexpected end of statement while looking for matching \
         double-quote"
    )]
    UnterminatedDoubleQuote {
        /// The word being expanded.
        word: String,
    },
    /// A `${` without its closing `}`.
    #[error("failed to process {word:?}: syntax error: missing '}}'")]
    MissingBrace {
        /// The word being expanded.
        word: String,
    },
    /// A `${VAR/pattern` without the `/` that starts the replacement.
    #[error("failed to process {word:?}: syntax error: missing '/' in ${{}}")]
    MissingSlash {
        /// The word being expanded.
        word: String,
    },
    /// `${}`, `${{…}`, `${:…}`: no variable name.
    #[error("failed to process {word:?}: syntax error: bad substitution")]
    BadSubstitution {
        /// The word being expanded.
        word: String,
    },
    /// An operator BuildKit does not implement, such as `${VAR:=x}` or `${VAR.}`.
    #[error("failed to process {word:?}: unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier {
        /// The word being expanded.
        word: String,
        /// The operator as written, e.g. `:=`.
        modifier: String,
    },
    /// `${VAR?message}` with VAR unset, or `${VAR:?message}` with VAR unset or empty.
    #[error("failed to process {word:?}: {name}: {message}")]
    Required {
        /// The word being expanded.
        word: String,
        /// The variable that must be set.
        name: String,
        /// The expanded message, or BuildKit's default one when none was given.
        message: String,
    },
    /// A pattern with an escape the pattern language does not know, such as `\x`.
    #[error("failed to process {word:?}: invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        /// The word being expanded.
        word: String,
        /// The pattern after expansion.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ShellError {
    /// The word whose expansion failed.
    pub fn word(&self) -> &str {
        match self {
            Self::UnterminatedSingleQuote { word }
            | Self::UnterminatedDoubleQuote { word }
            | Self::MissingBrace { word }
            | Self::MissingSlash { word }
            | Self::BadSubstitution { word }
            | Self::UnsupportedModifier { word, .. }
            | Self::Required { word, .. }
            | Self::InvalidPattern { word, .. } => word,
        }
    }
}

/// A lexer bound to the Dockerfile's escape character (`\` or `` ` ``).
#[derive(Debug, Clone, Copy)]
pub struct ShellLex {
    escape: char,
}

impl ShellLex {
    /// A lexer for the given escape character.
    pub fn new(escape: char) -> Self {
        Self { escape }
    }

    /// The escape character this lexer uses.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expands `word` as one word: quotes removed, variables substituted, no field splitting.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<Expanded, ShellError> {
        let mut lexer = Lexer::new(word, self.escape, env);
        let value = lexer.sequence(None, false, None)?;
        Ok(Expanded {
            value,
            matched: lexer.matched,
            unmatched: lexer.unmatched,
        })
    }

    /// Expands `word` and splits it into fields the way BuildKit's `ProcessWords` does.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        let mut lexer = Lexer::new(word, self.escape, env);
        let mut fields = Fields::default();
        lexer.sequence(None, false, Some(&mut fields))?;
        Ok(fields.finish())
    }
}

/// One expansion in progress: a cursor over the word plus what it has looked up so far.
struct Lexer<'a> {
    word: &'a str,
    pos: usize,
    escape: char,
    env: &'a dyn Env,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<'a> Lexer<'a> {
    fn new(word: &'a str, escape: char, env: &'a dyn Env) -> Self {
        // BuildKit reads words with Go's text/scanner, which drops a byte-order mark at the start.
        let pos = if word.starts_with('\u{feff}') {
            '\u{feff}'.len_utf8()
        } else {
            0
        };
        Self {
            word,
            pos,
            escape,
            env,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.word
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.pos += ch.len_utf8();
        Some(ch)
    }

    fn at_end(&self) -> bool {
        self.peek().is_none()
    }

    fn word(&self) -> String {
        self.word.to_owned()
    }

    fn lookup(&mut self, name: &str) -> Option<&'a str> {
        let env = self.env;
        let value = env.lookup(name);
        let seen = if value.is_some() {
            &mut self.matched
        } else {
            &mut self.unmatched
        };
        if !seen.contains(name) {
            seen.insert(name.to_owned());
        }
        value
    }

    /// Reads text up to `stop` (consumed) or, without one, to the end of the word. `raw` keeps
    /// escape characters, for the pattern forms. `fields` collects the field-split words, at the
    /// top level only.
    fn sequence(
        &mut self,
        stop: Option<char>,
        raw: bool,
        mut fields: Option<&mut Fields>,
    ) -> Result<String, ShellError> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.bump();
                return Ok(out);
            }
            match ch {
                '$' => {
                    let value = self.dollar()?;
                    if let Some(fields) = fields.as_deref_mut() {
                        fields.push_split(&value);
                    }
                    out.push_str(&value);
                }
                '\'' | '"' => {
                    let value = if ch == '\'' {
                        self.single_quoted()?
                    } else {
                        self.double_quoted(raw)?
                    };
                    if let Some(fields) = fields.as_deref_mut() {
                        fields.push_raw(&value);
                    }
                    out.push_str(&value);
                }
                _ => {
                    self.bump();
                    if ch != self.escape {
                        if let Some(fields) = fields.as_deref_mut() {
                            fields.push_char(ch);
                        }
                        out.push(ch);
                        continue;
                    }
                    if raw {
                        if let Some(fields) = fields.as_deref_mut() {
                            fields.push_raw_char(ch);
                        }
                        out.push(ch);
                    }
                    // A trailing escape character escapes nothing and disappears.
                    let Some(escaped) = self.bump() else { break };
                    if let Some(fields) = fields.as_deref_mut() {
                        fields.push_raw_char(escaped);
                    }
                    out.push(escaped);
                }
            }
        }
        match stop {
            None => Ok(out),
            Some('/') => Err(ShellError::MissingSlash { word: self.word() }),
            Some(_) => Err(ShellError::MissingBrace { word: self.word() }),
        }
    }

    /// Reads `'…'`: everything up to the next `'` is literal, escape characters too.
    fn single_quoted(&mut self) -> Result<String, ShellError> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(ShellError::UnterminatedSingleQuote { word: self.word() }),
                Some('\'') => return Ok(out),
                Some(ch) => out.push(ch),
            }
        }
    }

    /// Reads `"…"`: `$` expands, and the escape character escapes only `"`, `$` and itself.
    fn double_quoted(&mut self, raw: bool) -> Result<String, ShellError> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote { word: self.word() }),
                Some('"') => {
                    self.bump();
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    out.push_str(&value);
                }
                Some(ch) => {
                    self.bump();
                    if ch == self.escape {
                        if raw {
                            out.push(ch);
                        }
                        match self.peek() {
                            // The missing `"` is reported on the next turn.
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == self.escape => {
                                self.bump();
                                out.push(next);
                                continue;
                            }
                            // A literal escape character; in a pattern it is then doubled, so
                            // the pattern still reads it as a literal backslash.
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    /// Reads a name after `$` or `${`: a run of letters, digits and `_` not starting with a
    /// digit, a run of digits (a positional parameter), or one special-parameter character.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_go_digit(ch) {
                while let Some(digit) = self.peek().filter(|&c| is_go_digit(c)) {
                    self.bump();
                    name.push(digit);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!') {
                self.bump();
                name.push(ch);
                return name;
            }
            if !is_name_char(ch) {
                break;
            }
            self.bump();
            name.push(ch);
        }
        name
    }

    /// Expands a `$` expression, the cursor on the `$`.
    fn dollar(&mut self) -> Result<String, ShellError> {
        self.bump();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(self.lookup(&name).unwrap_or_default().to_owned());
        }
        self.bump();
        match self.peek() {
            None => return Err(ShellError::MissingBrace { word: self.word() }),
            Some('{' | '}' | ':') => return Err(ShellError::BadSubstitution { word: self.word() }),
            Some(_) => {}
        }
        let name = self.name();
        // BuildKit reports a word ending here as an unsupported modifier U+FFFD; say what it is.
        let Some(op) = self.bump() else {
            return Err(ShellError::MissingBrace { word: self.word() });
        };
        match op {
            '}' => Ok(self.lookup(&name).unwrap_or_default().to_owned()),
            '/' => self.replace(&name),
            ':' | '+' | '-' | '?' | '#' | '%' => self.modifier(&name, op),
            _ => Err(ShellError::UnsupportedModifier {
                word: self.word(),
                modifier: op.to_string(),
            }),
        }
    }

    /// A nested word failed; when the input ran out, the missing `stop` is the real problem.
    fn blame_end(&self, err: ShellError, stop: char) -> ShellError {
        match (self.at_end(), stop) {
            (false, _) => err,
            (true, '/') => ShellError::MissingSlash { word: self.word() },
            (true, _) => ShellError::MissingBrace { word: self.word() },
        }
    }

    /// `${name<op>word}` for the operators `-`, `+`, `?`, `#`, `%`, each optionally after `:`;
    /// the cursor is past `op`.
    fn modifier(&mut self, name: &str, op: char) -> Result<String, ShellError> {
        let (null_is_unset, op) = if op == ':' {
            (true, self.bump())
        } else {
            (false, Some(op))
        };
        let raw = matches!(op, Some('#' | '%'));
        let word = self
            .sequence(Some('}'), raw, None)
            .map_err(|err| self.blame_end(err, '}'))?;
        let value = self.lookup(name);
        let unset = match value {
            None => true,
            Some(value) => null_is_unset && value.is_empty(),
        };
        match op {
            Some('-') => Ok(if unset {
                word
            } else {
                value.unwrap_or_default().to_owned()
            }),
            Some('+') => Ok(if unset { String::new() } else { word }),
            Some('?') if unset => {
                let message = match (word.is_empty(), value) {
                    (false, _) => word,
                    (true, None) => "is not allowed to be unset".to_owned(),
                    (true, Some(_)) => "is not allowed to be empty".to_owned(),
                };
                Err(ShellError::Required {
                    word: self.word(),
                    name: name.to_owned(),
                    message,
                })
            }
            Some('?') => Ok(value.unwrap_or_default().to_owned()),
            // `:` changes nothing here; the pattern decides. The operator doubled means longest.
            Some(op @ ('#' | '%')) => {
                let value = value.unwrap_or_default();
                let (pattern, longest) = match word.strip_prefix(op) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                let trimmed = if op == '#' {
                    trim_prefix(value, pattern, longest)
                } else {
                    trim_suffix(value, pattern, longest)
                };
                trimmed.map_err(|reason| ShellError::InvalidPattern {
                    word: self.word(),
                    pattern: pattern.to_owned(),
                    reason,
                })
            }
            _ => Err(ShellError::UnsupportedModifier {
                word: self.word(),
                modifier: match op {
                    Some(op) => format!(":{op}"),
                    None => ":".to_owned(),
                },
            }),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`; the cursor is past the
    /// first `/`.
    fn replace(&mut self, name: &str) -> Result<String, ShellError> {
        let all = self.peek() == Some('/');
        if all {
            self.bump();
        }
        let pattern = self
            .sequence(Some('/'), true, None)
            .map_err(|err| self.blame_end(err, '/'))?;
        let replacement = self
            .sequence(Some('}'), true, None)
            .map_err(|err| self.blame_end(err, '}'))?;
        let value = self.lookup(name).unwrap_or_default();
        let compiled =
            Pattern::compile(&pattern, true).map_err(|reason| ShellError::InvalidPattern {
                word: self.word(),
                pattern: pattern.clone(),
                reason,
            })?;
        let text: Vec<char> = value.chars().collect();
        let ends = compiled.match_ends(&text);
        Ok(if all {
            replace_all(&text, &ends, &replacement)
        } else {
            match first_match(&ends, 0) {
                Some((start, end)) => {
                    let mut out: String = text.iter().take(start).collect();
                    out.push_str(&replacement);
                    out.extend(text.iter().skip(end));
                    out
                }
                None => value.to_owned(),
            }
        })
    }
}

/// Field splitting as BuildKit does it: whitespace from unquoted text ends a field, and quoted
/// text joins the current field whatever it contains.
#[derive(Debug, Default)]
struct Fields {
    current: String,
    done: Vec<String>,
    in_field: bool,
}

impl Fields {
    fn push_char(&mut self, ch: char) {
        if !ch.is_whitespace() {
            self.push_raw_char(ch);
        } else if self.in_field && !self.current.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
            self.in_field = false;
        }
    }

    fn push_split(&mut self, text: &str) {
        text.chars().for_each(|ch| self.push_char(ch));
    }

    fn push_raw_char(&mut self, ch: char) {
        self.current.push(ch);
        self.in_field = true;
    }

    fn push_raw(&mut self, text: &str) {
        self.current.push_str(text);
        self.in_field = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// Whether `ch` continues a variable name. Go's `unicode.IsLetter` is the general category L;
/// without category tables, the Alphabetic property minus numerals comes closest (it also admits
/// the combining vowel signs some scripts mark Alphabetic).
fn is_name_char(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_alphanumeric() || ch == '_'
    } else {
        (ch.is_alphabetic() && !ch.is_numeric()) || is_go_digit(ch)
    }
}

/// Go's `unicode.IsDigit`: the decimal digits (category Nd) of any script, as of Unicode 15.
fn is_go_digit(ch: char) -> bool {
    // Every non-ASCII Nd character lies in a run of ten starting with one of these zeros.
    const ZEROS: [u32; 67] = [
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0,
        0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0,
        0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0,
        0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0,
        0x11F50, 0x16A60, 0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140,
        0x1E2F0, 0x1E4F0, 0x1E950, 0x1FBF0,
    ];
    if ch.is_ascii() {
        return ch.is_ascii_digit();
    }
    let code = u32::from(ch);
    let below = ZEROS.partition_point(|&zero| zero <= code);
    below
        .checked_sub(1)
        .and_then(|i| ZEROS.get(i))
        .is_some_and(|&zero| code - zero < 10)
}

/// One element of a shell pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character other than a newline.
    Any,
    /// `*`: any run of characters other than newlines.
    Star,
}

/// A compiled shell pattern with BuildKit's matching rules: the result is the one a
/// backtracking matcher would find first (Go's leftmost-first regexp semantics), where `*`
/// prefers the longest run when `greedy` and the shortest otherwise.
#[derive(Debug)]
struct Pattern {
    tokens: Vec<Token>,
    greedy: bool,
}

impl Pattern {
    fn compile(source: &str, greedy: bool) -> Result<Self, String> {
        let mut tokens = Vec::new();
        // BuildKit scans patterns with Go's text/scanner too, which drops a leading BOM.
        let source = source.strip_prefix('\u{feff}').unwrap_or(source);
        let mut chars = source.chars().peekable();
        while let Some(ch) = chars.next() {
            let token = match ch {
                '*' => Token::Star,
                '?' => Token::Any,
                // `\}` and `\/` had to be escaped to get into `${…}`; the escape means nothing
                // to the pattern.
                '\\' if matches!(chars.peek(), Some('}' | '/')) => continue,
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '?' | '\\')) => Token::Literal(escaped),
                    Some(other) => return Err(format!("invalid escape '\\{other}'")),
                    None => return Err("invalid escape: '\\' at the end".to_owned()),
                },
                _ => Token::Literal(ch),
            };
            tokens.push(token);
        }
        Ok(Self { tokens, greedy })
    }

    /// For every start position in `text` (including its end), where the match starting there
    /// ends, if one does. Dynamic programming over (token, position) keeps this linear in both,
    /// so hostile patterns such as `*a*a*a*b` cannot make expansion slow.
    fn match_ends(&self, text: &[char]) -> Vec<Option<usize>> {
        let n = text.len();
        let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
        for token in self.tokens.iter().rev() {
            let mut row = vec![None; n + 1];
            match *token {
                Token::Literal(want) => {
                    for (j, &ch) in text.iter().enumerate() {
                        if ch == want {
                            row[j] = next[j + 1];
                        }
                    }
                }
                Token::Any => {
                    for (j, &ch) in text.iter().enumerate() {
                        if ch != '\n' {
                            row[j] = next[j + 1];
                        }
                    }
                }
                Token::Star => {
                    for j in (0..=n).rev() {
                        let longer = match text.get(j) {
                            Some(&ch) if ch != '\n' => row[j + 1],
                            _ => None,
                        };
                        row[j] = if self.greedy {
                            longer.or(next[j])
                        } else {
                            next[j].or(longer)
                        };
                    }
                }
            }
            next = row;
        }
        next
    }
}

/// The leftmost match at or after `from`, as (start, end).
fn first_match(ends: &[Option<usize>], from: usize) -> Option<(usize, usize)> {
    ends.iter()
        .enumerate()
        .skip(from)
        .find_map(|(start, end)| end.map(|end| (start, end)))
}

/// `${VAR#pattern}` / `${VAR##pattern}`.
fn trim_prefix(value: &str, pattern: &str, longest: bool) -> Result<String, String> {
    let pattern = Pattern::compile(pattern, longest)?;
    let text: Vec<char> = value.chars().collect();
    Ok(match pattern.match_ends(&text).first().copied().flatten() {
        Some(end) => text.iter().skip(end).collect(),
        None => value.to_owned(),
    })
}

/// `${VAR%pattern}` / `${VAR%%pattern}`: a prefix match on the reversed value with the
/// reversed pattern, which is how BuildKit finds the shortest or longest suffix.
fn trim_suffix(value: &str, pattern: &str, longest: bool) -> Result<String, String> {
    let pattern = Pattern::compile(&reverse_pattern(pattern), longest)?;
    let reversed: Vec<char> = value.chars().rev().collect();
    Ok(
        match pattern.match_ends(&reversed).first().copied().flatten() {
            Some(end) => {
                let keep = reversed.len() - end;
                value.chars().take(keep).collect()
            }
            None => value.to_owned(),
        },
    )
}

/// Reverses a pattern keeping each `\x` pair in order. A lone trailing `\` ends up first, where
/// it escapes what was the pattern's first character; BuildKit behaves the same.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut rest = chars.as_slice();
    while !rest.is_empty() {
        let len = if rest.len() > 1 && rest[0] == '\\' {
            2
        } else {
            1
        };
        let (unit, tail) = rest.split_at(len);
        units.push(unit);
        rest = tail;
    }
    units.iter().rev().flat_map(|unit| unit.iter()).collect()
}

/// Replaces every match the way Go's `Regexp.ReplaceAllString` does: an empty match right after
/// a previous match is skipped, and the replacement is a template where `$0` is the match.
fn replace_all(text: &[char], ends: &[Option<usize>], replacement: &str) -> String {
    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= text.len() {
        let Some((start, end)) = first_match(ends, search) else {
            break;
        };
        out.extend(&text[last_end..start]);
        if end > last_end || start == 0 {
            let matched: String = text[start..end].iter().collect();
            expand_template(replacement, &matched, &mut out);
        }
        last_end = end;
        search = if search < end { end } else { search + 1 };
    }
    out.extend(&text[last_end..]);
    out
}

/// Go's `Regexp.Expand` for a pattern whose only group is the whole match: `$$` is `$`, `$0` or
/// `${0}` the match, any other `$name` or `${name}` nothing, and a malformed `$` itself.
fn expand_template(template: &str, matched: &str, out: &mut String) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_reference(rest) {
            Some((name, after)) => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// The name of a `$name` or `${name}` reference at the start of `text`, and what follows it.
fn template_reference(text: &str) -> Option<(&str, &str)> {
    let (braced, body) = match text.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, text),
    };
    let len = body
        .char_indices()
        .find(|&(_, ch)| !is_name_char(ch))
        .map_or(body.len(), |(i, _)| i);
    if len == 0 {
        return None;
    }
    let (name, after) = body.split_at(len);
    let after = if braced {
        after.strip_prefix('}')?
    } else {
        after
    };
    Some((name, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn expand(input: &str, pairs: &[(&str, &str)]) -> Result<String, ShellError> {
        ShellLex::new('\\')
            .process_word(input, &env(pairs))
            .map(|e| e.value)
    }

    fn words(input: &str, pairs: &[(&str, &str)]) -> Result<Vec<String>, ShellError> {
        ShellLex::new('\\').process_words(input, &env(pairs))
    }

    fn err(input: &str, pairs: &[(&str, &str)]) -> String {
        match expand(input, pairs) {
            Ok(value) => panic!("{input:?} expanded to {value:?}, expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn env_implementations() {
        let list = env(&[("A", "1"), ("B", "2"), ("A", "3")]);
        assert_eq!(list.lookup("A"), Some("3"), "the last entry wins");
        assert_eq!(list.as_slice().lookup("B"), Some("2"));
        assert_eq!(list.lookup("a"), None, "names are case-sensitive");
        let map: BTreeMap<String, String> = list.iter().cloned().collect();
        assert_eq!(map.lookup("A"), Some("3"));
        let hash: HashMap<String, String> = list.into_iter().collect();
        assert_eq!(hash.lookup("A"), Some("3"));
        assert_eq!(hash.lookup("C"), None);
    }

    #[test]
    fn matched_and_unmatched() {
        let lex = ShellLex::new('\\');
        let vars = env(&[("FOO", "xxx"), ("BAR", "")]);
        let cases: &[(&str, &str, &[&str], &[&str])] = &[
            ("x", "x", &[], &[]),
            ("x ${UNUSED}", "x ", &[], &["UNUSED"]),
            (
                "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
                "xxx  ccc",
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            (
                "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
                "xxx bbb ccc",
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            (
                "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
                "aaa bbb ",
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            (
                "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
                "aaa  ",
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            ("${BAR?bbb}", "", &["BAR"], &[]),
            // The alternative not taken is still expanded, so its names still count.
            ("${FOO:-$NOPE}", "xxx", &["FOO"], &["NOPE"]),
            ("${FOO#$BAR}", "xxx", &["FOO", "BAR"], &[]),
            ("$1${@}$FOO$FOO", "xxxxxx", &["FOO"], &["1", "@"]),
            ("'$FOO' \\$BAR", "$FOO $BAR", &[], &[]),
        ];
        for &(input, value, matched, unmatched) in cases {
            let got = lex.process_word(input, &vars).unwrap();
            assert_eq!(got.value, value, "{input}");
            assert_eq!(got.matched, set(matched), "matched of {input}");
            assert_eq!(got.unmatched, set(unmatched), "unmatched of {input}");
        }
    }

    #[test]
    fn release_file_name() {
        let word = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let base = [("VERSION", "v1.2.3"), ("TARGETOS", "linux")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            expand(word, &pairs).unwrap()
        };
        assert_eq!(
            with(&[("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")]),
            "something-v1.2.3.linux-arm-v7.tar.gz"
        );
        assert_eq!(
            with(&[("TARGETARCH", "arm64"), ("TARGETVARIANT", "")]),
            "something-v1.2.3.linux-arm64.tar.gz"
        );
        assert_eq!(
            with(&[("TARGETARCH", "arm64")]),
            "something-v1.2.3.linux-arm64.tar.gz"
        );
    }

    #[test]
    fn backtick_escape() {
        let lex = ShellLex::new('`');
        let vars = env(&[("DIR", "C:\\app")]);
        let word = |input: &str| lex.process_word(input, &vars).map(|e| e.value);
        assert_eq!(lex.escape(), '`');
        // Backslashes are ordinary characters, so Windows paths survive.
        assert_eq!(
            word("C:\\Program Files\\x").unwrap(),
            "C:\\Program Files\\x"
        );
        assert_eq!(word("$DIR\\bin").unwrap(), "C:\\app\\bin");
        assert_eq!(word("`$DIR").unwrap(), "$DIR");
        assert_eq!(word("a``b").unwrap(), "a`b");
        assert_eq!(word("a`").unwrap(), "a", "a trailing escape disappears");
        assert_eq!(word("\"`\"`$x``\\\"").unwrap(), "\"$x`\\");
        assert_eq!(
            word("\"a`b\"").unwrap(),
            "a`b",
            "other escapes stay in double quotes"
        );
        assert_eq!(word("'`$DIR'").unwrap(), "`$DIR");
        assert_eq!(
            lex.process_words("a` b c", &vars).unwrap(),
            vec!["a b".to_owned(), "c".to_owned()]
        );
        // Patterns keep backslash as their escape whatever the directive says.
        let stars = env(&[("V", "a*b*")]);
        let trim = |input: &str| lex.process_word(input, &stars).map(|e| e.value);
        assert_eq!(trim("${V%\\*}").unwrap(), "a*b");
        assert_eq!(trim("${V%%\\**}").unwrap(), "a");
    }

    #[test]
    fn error_messages() {
        let vars = [("SET", "x"), ("EMPTY", "")];
        let cases: &[(&str, &str)] = &[
            (
                "a${B",
                r#"failed to process "a${B": syntax error: missing '}'"#,
            ),
            ("${", r#"failed to process "${": syntax error: missing '}'"#),
            (
                "${B:-x",
                r#"failed to process "${B:-x": syntax error: missing '}'"#,
            ),
            (
                "${B:-${C}",
                r#"failed to process "${B:-${C}": syntax error: missing '}'"#,
            ),
            (
                "${}",
                r#"failed to process "${}": syntax error: bad substitution"#,
            ),
            (
                "${:-x}",
                r#"failed to process "${:-x}": syntax error: bad substitution"#,
            ),
            (
                "${{B}",
                r#"failed to process "${{B}": syntax error: bad substitution"#,
            ),
            (
                "'abc",
                r#"failed to process "'abc": unexpected end of statement while looking for matching single-quote"#,
            ),
            (
                "\"abc\\\"",
                r#"failed to process "\"abc\\\"": unexpected end of statement while looking for matching double-quote"#,
            ),
            (
                "${B:=x}",
                r#"failed to process "${B:=x}": unsupported modifier (:=) in substitution"#,
            ),
            (
                "${B=x}",
                r#"failed to process "${B=x}": unsupported modifier (=) in substitution"#,
            ),
            (
                "${B.}",
                r#"failed to process "${B.}": unsupported modifier (.) in substitution"#,
            ),
            (
                "${B?}",
                r#"failed to process "${B?}": B: is not allowed to be unset"#,
            ),
            (
                "${B:?}",
                r#"failed to process "${B:?}": B: is not allowed to be unset"#,
            ),
            (
                "${EMPTY:?}",
                r#"failed to process "${EMPTY:?}": EMPTY: is not allowed to be empty"#,
            ),
            (
                "${B?need $SET here}",
                r#"failed to process "${B?need $SET here}": B: need x here"#,
            ),
            (
                "${EMPTY:?must be set}",
                r#"failed to process "${EMPTY:?must be set}": EMPTY: must be set"#,
            ),
            (
                "${SET/a}",
                r#"failed to process "${SET/a}": syntax error: missing '/' in ${}"#,
            ),
            (
                "${SET#\\x}",
                r#"failed to process "${SET#\\x}": invalid pattern (\x) in substitution: invalid escape '\x'"#,
            ),
            (
                "${SET%%\\a}",
                r#"failed to process "${SET%%\\a}": invalid pattern (\a) in substitution: invalid escape '\a'"#,
            ),
        ];
        for &(input, message) in cases {
            assert_eq!(err(input, &vars), message, "{input}");
        }
        let required = expand("${B?oops}", &vars).unwrap_err();
        assert_eq!(required.word(), "${B?oops}");
        assert!(matches!(required, ShellError::Required { ref name, .. } if name == "B"));
    }

    #[test]
    fn required_variables() {
        let set_ = [("VAR", "plain"), ("ARG", "x")];
        let empty = [("VAR", ""), ("ARG", "x")];
        let unset = [("ARG", "x")];
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";
        assert_eq!(expand(no_empty, &set_).unwrap(), "plain");
        assert!(err(no_empty, &empty).ends_with("VAR: message herex"));
        assert!(err(no_empty, &unset).ends_with("VAR: message herex"));
        assert_eq!(expand(no_unset, &set_).unwrap(), "plain");
        assert_eq!(expand(no_unset, &empty).unwrap(), "");
        assert!(err(no_unset, &unset).ends_with("VAR: message herex"));
        // Alternatives are evaluated even when not used, errors included.
        assert!(err("${VAR:-${NOPE?}}", &set_).ends_with("NOPE: is not allowed to be unset"));
    }

    #[test]
    fn trim_patterns() {
        let cases: &[(&str, &str, &str)] = &[
            ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", "()[]{}^$.*?|\\x", "x"),
            ("${FOO%%\\**}", "xx**", "xx"),
            ("${FOO#*x*y}", "xxyy", "y"),
            ("${FOO#*}", "xxyy", "xxyy"),
            ("${FOO#}", "xxyy", "xxyy"),
            ("${FOO##*x}", "xxyy", "yy"),
            ("${FOO##}", "xxyy", "xxyy"),
            ("${FOO#?\\?}", "???y", "?y"),
            ("${FOO%x}", "xxyy", "xxyy"),
            ("${FOO%%\\**\\*}", "a***yy*", "a"),
            ("${FOO%}", "xxyy", "xxyy"),
            ("${FOO%.*}", "archive.tar.gz", "archive.tar"),
            ("${FOO%%.*}", "archive.tar.gz", "archive"),
            ("${FOO#*/}", "a/b/c", "b/c"),
            ("${FOO##*/}", "a/b/c", "c"),
            ("${FOO:#a}", "abc", "bc"),
            ("${FOO#\"\\a\"}", "\\abc", "bc"),
            ("${FOO#'*'}", "abc", "abc"),
            ("${FOO%*'\\'}", "ab*", "ab"),
            ("${FOO#*}", "", ""),
            ("${NOPE%%*}", "x", ""),
            // Wildcards stop at newlines, like Go's `.`.
            ("${FOO#*b}", "a\nb", "a\nb"),
            ("${FOO##a?}", "a\nb", "a\nb"),
            ("${FOO%%b*}", "ab\nc", "ab\nc"),
            ("${FOO#한?}", "한국어", "어"),
            ("${FOO%?}", "한국어", "한국"),
        ];
        for &(input, value, want) in cases {
            assert_eq!(
                expand(input, &[("FOO", value)]).unwrap(),
                want,
                "{input} on {value:?}"
            );
        }
        let vars = [("FOO", "xxyy"), ("BAR", "x"), ("EMPTY", "")];
        assert_eq!(expand("${FOO#$BAR}", &vars).unwrap(), "xyy");
        assert_eq!(expand("${FOO#$EMPTY}", &vars).unwrap(), "xxyy");
        assert_eq!(expand("${FOO%%$EMPTY}", &vars).unwrap(), "xxyy");
        assert_eq!(
            expand("${NOPE:-.}${FOO%x}${NOPE:-.}", &vars).unwrap(),
            ".xxyy."
        );
    }

    /// An input, its environment and the expected expansion.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );

    #[test]
    fn replace_patterns() {
        let cases: &[Case] = &[
            (
                "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
                &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
                "/foo.*/*.txt - /foo..*.txt",
            ),
            (
                "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
                &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
                "/tmp/bar.txt - /bar.txt",
            ),
            (
                "${FOO/$NEEDLE/$R} - ${FOO//$NEEDLE/$R}",
                &[("FOO", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("R", "/")],
                "/foo/b/c.txt - /foo/c.txt",
            ),
            (
                "${FOO/$NEEDLE/$R}",
                &[
                    ("FOO", "http://google.de"),
                    ("NEEDLE", "http://"),
                    ("R", "https://"),
                ],
                "https://google.de",
            ),
            (
                "${FOO//\\//\\/}",
                &[("FOO", "/tmp/foo.txt")],
                "\\/tmp\\/foo.txt",
            ),
            ("${FOO/$BAR/ww}", &[("FOO", "xxyy"), ("BAR", "")], "wwxxyy"),
            ("${FOO///}", &[("FOO", "xxyy")], "xxyy"),
            ("${FOO///}", &[], ""),
            // Go's ReplaceAllString: empty matches everywhere except right after a match.
            ("${FOO//$BAR/-}", &[("FOO", "ab"), ("BAR", "")], "-a-b-"),
            ("${FOO//*/x}", &[("FOO", "abc")], "x"),
            ("${FOO//b*/x}", &[("FOO", "abc\nbd")], "ax\nx"),
            ("${FOO/b*/x}", &[("FOO", "abcb")], "ax"),
            ("${FOO//?/.}", &[("FOO", "한국")], ".."),
            // The replace-all replacement is a Go template whose only group is the match.
            ("${FOO//o/'[$0]'}", &[("FOO", "foo")], "f[o][o]"),
            ("${FOO//o/'${0}$$$1$x$'}", &[("FOO", "fo")], "fo$$"),
            ("${FOO/o/'[$0]'}", &[("FOO", "foo")], "f[$0]o"),
            ("${FOO/o/\\$}", &[("FOO", "foo")], "f\\$o"),
        ];
        for &(input, pairs, want) in cases {
            assert_eq!(
                expand(input, pairs).unwrap(),
                want,
                "{input} with {pairs:?}"
            );
        }
        assert!(expand("${FOO//ww}", &[("FOO", "x")]).is_err());
        assert!(expand("${FOO//}", &[("FOO", "x")]).is_err());
        assert!(expand("${FOO/\\x/y}", &[("FOO", "x")]).is_err());
    }

    #[test]
    fn field_splitting() {
        let vars = [("SPACE", "a  b"), ("EMPTY", "")];
        let w = |input: &str| words(input, &vars).unwrap();
        assert_eq!(w("x${SPACE}y"), ["xa", "by"]);
        assert_eq!(w("x\"${SPACE}\"y"), ["xa  by"]);
        assert_eq!(w("  one   two  "), ["one", "two"]);
        assert_eq!(w("one\\ two"), ["one two"]);
        // Quirks kept from BuildKit: quoted text in a default still splits, "" is dropped.
        assert_eq!(w("${NOPE:-\"p q\"}"), ["p", "q"]);
        assert_eq!(w("a \"\" b ''"), ["a", "b"]);
        assert_eq!(w("$EMPTY"), Vec::<String>::new());
        assert_eq!(w(""), Vec::<String>::new());
        assert_eq!(w("tab\tnl\nnbsp\u{a0}end"), ["tab", "nl", "nbsp", "end"]);
        assert!(words("a 'b", &vars).is_err());
    }

    #[test]
    fn names_and_parameters() {
        let vars = [
            ("한국어", "korean"),
            ("X", "x"),
            ("X٣", "arabic-indic"),
            ("_a1", "u"),
        ];
        assert_eq!(expand("$한국어!", &vars).unwrap(), "korean!");
        assert_eq!(expand("$X٣", &vars).unwrap(), "arabic-indic");
        assert_eq!(expand("$X²", &vars).unwrap(), "x²");
        assert_eq!(expand("$X-$X.$_a1/", &vars).unwrap(), "x-x.u/");
        assert_eq!(
            expand("$10x ${10}x $0x $#x $$ $", &vars).unwrap(),
            "x x x x  $"
        );
        assert_eq!(expand("$ $. $/ \"$\"", &vars).unwrap(), "$ $. $/ $");
        assert_eq!(expand("${+x}${%x}${/a/b}", &vars).unwrap(), "");
        assert_eq!(
            expand("\u{feff}$X", &vars).unwrap(),
            "x",
            "a leading BOM is dropped"
        );
        assert_eq!(expand("$X\u{feff}", &vars).unwrap(), "x\u{feff}");
    }

    #[test]
    fn digits_table() {
        assert!(is_go_digit('0') && is_go_digit('9') && !is_go_digit('a'));
        assert!(is_go_digit('٠') && is_go_digit('٩') && !is_go_digit('٪'));
        assert!(is_go_digit('\u{1D7FF}') && !is_go_digit('\u{1D800}'));
        assert!(!is_go_digit('²') && !is_go_digit('Ⅻ') && !is_go_digit('\u{65F}'));
        for zero in ['٠', '०', '০', '０', '\u{1E950}'] {
            for offset in 0..10 {
                let digit = char::from_u32(u32::from(zero) + offset).unwrap();
                assert!(digit.is_numeric() && is_go_digit(digit), "{digit:?}");
            }
        }
    }

    #[test]
    fn pattern_reversal() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("👽\\🚀🖖"), "🖖\\🚀👽");
        assert_eq!(reverse_pattern("\\\\b"), "b\\\\");
    }

    #[test]
    fn linear_time_on_hostile_patterns() {
        let value = "a".repeat(4000);
        let pattern = "*a".repeat(40) + "b";
        let input = format!("${{V##{pattern}}}${{V//{pattern}/x}}");
        assert_eq!(expand(&input, &[("V", &value)]).unwrap(), value.repeat(2));
    }

    /// A small deterministic generator, so the property tests need no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[(self.next() % items.len() as u64) as usize]
        }

        fn text(&mut self, alphabet: &[&str], max: u64) -> String {
            let len = self.next() % max;
            (0..len).map(|_| self.pick(alphabet)).collect()
        }
    }

    const ALPHABET: &[&str] = &[
        "$", "{", "}", ":", "-", "+", "?", "#", "%", "/", "'", "\"", "\\", "`", "*", " ", "\t",
        "\n", "A", "B", "a", "_", "1", "0", "@", "!", "=", ".", "한", "é", "\u{a0}", "${A}",
        "${B:-", "${A#", "${A//", "$A", "$1",
    ];

    #[test]
    fn random_words_never_panic_and_stay_consistent() {
        let vars = env(&[("A", "v a*l"), ("B", ""), ("한", "k")]);
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        for _ in 0..20_000 {
            let input = rng.text(ALPHABET, 24);
            for escape in ['\\', '`'] {
                let lex = ShellLex::new(escape);
                let word = lex.process_word(&input, &vars);
                let split = lex.process_words(&input, &vars);
                assert_eq!(word.is_ok(), split.is_ok(), "{input:?} with {escape}");
                if let Ok(expanded) = word {
                    for name in &expanded.matched {
                        assert!(vars.lookup(name).is_some(), "{name} in {input:?}");
                    }
                    for name in &expanded.unmatched {
                        assert!(vars.lookup(name).is_none(), "{name} in {input:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn quoting_round_trips() {
        let vars = env(&[("A", "set")]);
        let lex = ShellLex::new('\\');
        let mut rng = Rng(0x0dd_ba11);
        for _ in 0..5_000 {
            let text = rng.text(ALPHABET, 16);
            let escaped: String = text.chars().flat_map(|c| ['\\', c]).collect();
            assert_eq!(lex.process_word(&escaped, &vars).unwrap().value, text);
            let fields = lex.process_words(&escaped, &vars).unwrap();
            let want: Vec<String> = Some(text.clone())
                .filter(|t| !t.is_empty())
                .into_iter()
                .collect();
            assert_eq!(fields, want, "{escaped:?}");

            let double: String = text
                .chars()
                .flat_map(|c| match c {
                    '"' | '$' | '\\' => vec!['\\', c],
                    _ => vec![c],
                })
                .collect();
            let double = format!("\"{double}\"");
            assert_eq!(
                lex.process_word(&double, &vars).unwrap().value,
                text,
                "{double:?}"
            );

            if !text.contains('\'') {
                let single = format!("'{text}'");
                assert_eq!(lex.process_word(&single, &vars).unwrap().value, text);
            }
        }
    }
}
