//! The Dockerfile syntax layer: turns text into a flat list of [`Node`]s, one per instruction,
//! the same tree BuildKit's parser builds (and dumps in the same format, which is how the
//! conformance test compares us with BuildKit). This layer knows parser directives, comments,
//! line continuations, heredoc bodies, flags and the per-instruction argument shapes (JSON
//! arrays, key/value lists, whitespace lists); it does not judge whether an instruction makes
//! sense, which is the job of [`crate::instructions`].

use std::fmt;

/// Instructions whose arguments may name heredocs (`<<EOF`).
const HEREDOC_INSTRUCTIONS: &[&str] = &["add", "copy", "run"];

/// One instruction as parsed, before any validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The instruction keyword as written (case kept; compare with [`Node::keyword`]).
    pub value: String,
    /// Flags (`--name=value`) written before the arguments, without validation.
    pub flags: Vec<String>,
    /// The arguments, in the shape the instruction's parser gave them.
    pub args: Vec<String>,
    /// The instruction nested in an `ONBUILD`.
    pub child: Option<Box<Node>>,
    /// True when the arguments were written as a JSON array (exec form).
    pub json: bool,
    /// Heredoc bodies that follow the instruction, in order.
    pub heredocs: Vec<Heredoc>,
    /// The instruction's text after line continuations were joined (heredoc bodies excluded).
    pub original: String,
    /// First line of the instruction in the file, counted from 1.
    pub start_line: usize,
    /// Last line of the instruction (including heredoc bodies).
    pub end_line: usize,
    /// Comment lines directly above the instruction, without the `#`.
    pub comments: Vec<String>,
}

impl Node {
    /// The instruction keyword in lower case (`from`, `run`, …).
    pub fn keyword(&self) -> String {
        self.value.to_ascii_lowercase()
    }

    /// Renders the node as BuildKit's parser dump does: `(keyword ["flags"] "arg" …)`.
    pub fn dump(&self) -> String {
        let mut out = String::from("(");
        out.push_str(&self.dump_inner());
        out.push(')');
        out
    }

    fn dump_inner(&self) -> String {
        let mut out = self.value.to_lowercase();
        if !self.flags.is_empty() {
            out.push_str(" [");
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            out.push_str(&quoted.join(" "));
            out.push(']');
        }
        if let Some(child) = &self.child {
            out.push(' ');
            out.push_str(&child.dump());
        }
        for arg in &self.args {
            out.push(' ');
            out.push_str(&go_quote(arg));
        }
        out.trim().to_string()
    }
}

/// A heredoc attached to an instruction (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The file descriptor written before `<<` (`3<<EOF`), 0 when absent.
    pub file_descriptor: u32,
    /// False when the delimiter was quoted: the body is then taken literally.
    pub expand: bool,
    /// True for `<<-`: leading tabs are stripped from the body and the delimiter line.
    pub chomp: bool,
    /// The body, each line with its newline, leading tabs still present.
    pub content: String,
}

impl Heredoc {
    /// The body as the instruction sees it: leading tabs removed for `<<-`.
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|l| l.trim_start_matches('\t'))
            .collect()
    }
}

/// The parsed file: its instructions and the directives that shaped the parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Every instruction in file order.
    pub nodes: Vec<Node>,
    /// The escape character (`\` unless `# escape=` said otherwise).
    pub escape: char,
    /// The `# syntax=` directive, when present.
    pub syntax: Option<String>,
    /// Warnings that do not stop the build (e.g. empty continuation lines).
    pub warnings: Vec<String>,
}

/// What went wrong while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The file holds no instruction at all.
    NoInstructions,
    /// A parser directive appears twice.
    DuplicateDirective(String),
    /// `# escape=` names something other than `\` or a backtick.
    InvalidEscape(String),
    /// A heredoc body never reaches its delimiter line.
    UnterminatedHeredoc(String),
    /// A JSON array holds something other than strings.
    JsonNotStrings,
    /// `ENV`/`LABEL` in the old `key value` form without a value.
    MissingValue(String),
    /// `ENV`/`LABEL` in the `key=value` form with a word that has no `=`.
    MissingEquals(String),
}

/// A parse error with the lines it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// What went wrong.
    pub kind: ParseErrorKind,
    /// First line concerned, from 1 (0 when the file is empty).
    pub line: usize,
    /// Last line concerned.
    pub end_line: usize,
}

impl ParseError {
    /// A stable, machine-readable reason for the error.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ParseErrorKind::NoInstructions => "NoInstructions",
            ParseErrorKind::DuplicateDirective(_) => "DuplicateDirective",
            ParseErrorKind::InvalidEscape(_) => "InvalidEscape",
            ParseErrorKind::UnterminatedHeredoc(_) => "UnterminatedHeredoc",
            ParseErrorKind::JsonNotStrings => "JsonNotStrings",
            ParseErrorKind::MissingValue(_) => "MissingValue",
            ParseErrorKind::MissingEquals(_) => "MissingEquals",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "dockerfile: ")?;
        } else if self.end_line > self.line {
            write!(f, "lines {}-{}: ", self.line, self.end_line)?;
        } else {
            write!(f, "line {}: ", self.line)?;
        }
        match &self.kind {
            ParseErrorKind::NoInstructions => write!(f, "the file has no instructions"),
            ParseErrorKind::DuplicateDirective(d) => {
                write!(f, "only one {d} parser directive can be used")
            }
            ParseErrorKind::InvalidEscape(e) => {
                write!(f, "invalid escape token '{e}': it must be ` or \\")
            }
            ParseErrorKind::UnterminatedHeredoc(n) => {
                write!(
                    f,
                    "unterminated heredoc: no line reads {n:?} before the end of the file"
                )
            }
            ParseErrorKind::JsonNotStrings => write!(
                f,
                "when using JSON array syntax, arrays must be comprised of strings only"
            ),
            ParseErrorKind::MissingValue(k) => write!(f, "{k} must have two arguments"),
            ParseErrorKind::MissingEquals(w) => write!(
                f,
                "syntax error: can't find = in {w:?}; it must be of the form name=value"
            ),
        }
    }
}

/// Parser directives (`# syntax=`, `# escape=`, `# check=`) seen at the top of the file.
#[derive(Debug)]
struct Directives {
    escape: char,
    syntax: Option<String>,
    seen: Vec<String>,
    done: bool,
}

impl Directives {
    fn new() -> Self {
        Self {
            escape: '\\',
            syntax: None,
            seen: Vec::new(),
            done: false,
        }
    }

    /// Looks at one raw line while directives may still appear; the first line that is not a
    /// known directive ends the directive block for good.
    fn observe(&mut self, line: &str) -> Result<(), ParseErrorKind> {
        if self.done {
            return Ok(());
        }
        let Some((key, value)) = directive_of(line) else {
            self.done = true;
            return Ok(());
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "escape" | "syntax" | "check") {
            self.done = true;
            return Ok(());
        }
        if self.seen.contains(&key) {
            return Err(ParseErrorKind::DuplicateDirective(key));
        }
        self.seen.push(key.clone());
        match key.as_str() {
            "escape" => match value {
                "\\" => self.escape = '\\',
                "`" => self.escape = '`',
                other => return Err(ParseErrorKind::InvalidEscape(other.to_string())),
            },
            "syntax" => self.syntax = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }
}

/// Splits `# key = value` into its parts: the key is a letter followed by letters and digits,
/// the value is trimmed and not empty.
fn directive_of(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphanumeric() && (i > 0 || c.is_ascii_alphabetic())))
        .map_or(rest.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let (key, rest) = rest.split_at(key_len);
    let value = rest.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((key, value))
}

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// BuildKit's separator for whitespace lists: spaces, tabs and the other ASCII blanks.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{0b}' | '\u{0c}' | '\r')
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    trim_newline(line)
        .trim_start_matches(is_space)
        .starts_with('#')
}

/// Removes a trailing line-continuation escape. The escape continues the line when it is the
/// last non-blank character and is not itself escaped, or when it stands alone on the line.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line.to_string(), true);
    };
    if before.is_empty() {
        return (String::new(), false);
    }
    if before.ends_with(escape) {
        return (line.to_string(), true);
    }
    (before.to_string(), false)
}

/// Splits a file into lines that keep their line endings, as the parser's scanner does.
fn lines_of(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// Parses Dockerfile text into nodes.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = lines_of(text);
    let mut directives = Directives::new();
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut i = 0;
    let err = |kind, line, end_line| ParseError {
        kind,
        line,
        end_line,
    };

    while i < lines.len() {
        let raw = lines[i];
        let line_no = i + 1;
        i += 1;
        if is_comment(raw) {
            let trimmed = trim_newline(raw).trim_start_matches(is_space);
            comments.push(trimmed[1..].trim().to_string());
        }
        let first = trim_newline(raw).trim_start_matches(is_space);
        directives
            .observe(first)
            .map_err(|k| err(k, line_no, line_no))?;
        let first = if first.starts_with('#') { "" } else { first };
        let (mut line, mut end_of_line) = trim_continuation(first, directives.escape);
        if end_of_line && line.is_empty() {
            continue;
        }
        let start_line = line_no;
        let mut empty_continuation = false;
        while !end_of_line && i < lines.len() {
            let raw = lines[i];
            i += 1;
            let text = trim_newline(raw);
            directives.observe(text).map_err(|k| err(k, i, i))?;
            if is_comment(raw) {
                continue;
            }
            if text.trim_start_matches(is_space).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (cont, eol) = trim_continuation(text, directives.escape);
            line.push_str(&cont);
            end_of_line = eol;
        }
        if empty_continuation {
            warnings.push(format!(
                "line {start_line}: empty continuation line found in: {line} (empty \
                 continuation lines will become errors in a future BuildKit release)"
            ));
        }
        let mut node = node_from_line(&line, directives.escape)
            .map_err(|k| err(k, start_line, i.max(start_line)))?;
        node.comments = std::mem::take(&mut comments);
        if can_contain_heredoc(&node) {
            for mut heredoc in heredocs_in(&line) {
                let mut terminated = false;
                while i < lines.len() {
                    let raw = lines[i];
                    i += 1;
                    let mut candidate = trim_newline(raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                }
                if !terminated {
                    return Err(err(
                        ParseErrorKind::UnterminatedHeredoc(heredoc.name),
                        start_line,
                        i,
                    ));
                }
                node.heredocs.push(heredoc);
            }
        }
        node.start_line = start_line;
        node.end_line = i.max(start_line);
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(err(
            ParseErrorKind::NoInstructions,
            lines.len(),
            lines.len(),
        ));
    }
    Ok(Parsed {
        nodes,
        escape: directives.escape,
        syntax: directives.syntax,
        warnings,
    })
}

fn can_contain_heredoc(node: &Node) -> bool {
    let target = match (&node.child, node.keyword().as_str()) {
        (Some(child), "onbuild") => child.as_ref(),
        _ => node,
    };
    HEREDOC_INSTRUCTIONS.contains(&target.keyword().as_str()) && !target.json
}

/// Finds the heredoc markers (`<<EOF`, `<<-"EOF"`, `3<<EOF`) among the words of a line.
fn heredocs_in(line: &str) -> Vec<Heredoc> {
    raw_words(line)
        .iter()
        .filter_map(|w| heredoc_marker(w))
        .collect()
}

/// Splits a line into words at unquoted whitespace, keeping quotes and escapes as written.
fn raw_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                word.push(c);
                if c == q {
                    quote = None;
                } else if c == '\\'
                    && q == '"'
                    && let Some(n) = chars.next()
                {
                    word.push(n);
                }
            }
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => {
                word.push(c);
                if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == '\\'
                    && let Some(n) = chars.next()
                {
                    word.push(n);
                }
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Reads `[fd]<<[-]WORD` where WORD is one shell word (possibly quoted, which turns off
/// expansion of the body).
fn heredoc_marker(word: &str) -> Option<Heredoc> {
    let digits = word.chars().take_while(char::is_ascii_digit).count();
    let (fd, rest) = word.split_at(digits);
    let rest = rest.strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let mut name = String::new();
    let mut quoted = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    name.push(n);
                }
            }
            (Some(_), c) => name.push(c),
            (None, '\'' | '"') => {
                quoted = true;
                quote = Some(c);
            }
            (None, '\\') => {
                quoted = true;
                if let Some(n) = chars.next() {
                    name.push(n);
                }
            }
            (None, c) => name.push(c),
        }
    }
    if name.is_empty() || quote.is_some() {
        return None;
    }
    Some(Heredoc {
        name,
        file_descriptor: fd.parse().unwrap_or(0),
        expand: !quoted,
        chomp,
        content: String::new(),
    })
}

/// Builds the node for one joined instruction line.
fn node_from_line(line: &str, escape: char) -> Result<Node, ParseErrorKind> {
    let trimmed = line.trim_matches(is_space);
    let (cmd, rest) = match trimmed.find(is_blank) {
        Some(pos) => (&trimmed[..pos], trimmed[pos..].trim_start_matches(is_blank)),
        None => (trimmed, ""),
    };
    let (args_text, flags) = extract_flags(rest);
    let args_text = args_text.trim_matches(is_space);
    let mut node = Node {
        value: cmd.to_string(),
        flags,
        original: line.to_string(),
        ..Node::default()
    };
    match cmd.to_ascii_lowercase().as_str() {
        "add" | "copy" | "volume" => maybe_json_to_list(args_text, &mut node)?,
        "arg" => node.args = parse_words(args_text, escape),
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(args_text, &mut node)?,
        "env" => parse_name_val(args_text, "ENV", escape, &mut node)?,
        "label" => parse_name_val(args_text, "LABEL", escape, &mut node)?,
        "expose" | "from" => node.args = whitespace_list(args_text),
        "healthcheck" => parse_health(args_text, &mut node)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if !args_text.is_empty() {
                node.args = vec![args_text.to_string()];
            }
        }
        "onbuild" => {
            if !args_text.is_empty() {
                node.child = Some(Box::new(node_from_line(args_text, escape)?));
            }
        }
        // Unknown instructions parse to an empty argument, as in BuildKit; the instruction
        // layer reports them with their line.
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

/// Takes the leading `--flag[=value]` words off an instruction's arguments. Quotes inside a
/// flag are removed and `\` escapes the next character; a bare `--` ends the flags.
fn extract_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut flags = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut iter = line.char_indices().peekable();
    while let Some((pos, c)) = iter.next() {
        match phase {
            Phase::Spaces => {
                if is_space(c) {
                    continue;
                }
                let next_is_dash = line[pos + c.len_utf8()..].starts_with('-');
                if c != '-' || !next_is_dash {
                    return (&line[pos..], flags);
                }
                phase = Phase::Word;
                word.push(c);
            }
            Phase::Word => {
                if is_space(c) {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (&line[pos..], flags);
                    }
                    if blank_ok || !word.is_empty() {
                        flags.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                } else if c == '\'' || c == '"' {
                    phase = Phase::Quote(c);
                    blank_ok = true;
                } else if c == '\\' {
                    if let Some((_, n)) = iter.next() {
                        word.push(n);
                    }
                } else {
                    word.push(c);
                }
            }
            Phase::Quote(q) => {
                if c == q {
                    phase = Phase::Word;
                } else if c == '\\' {
                    match iter.next() {
                        Some((_, n)) => word.push(n),
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(c);
                }
            }
        }
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        flags.push(word);
    }
    ("", flags)
}

/// Splits words at unquoted whitespace, keeping quotes and escapes (they are removed later by
/// shell-word expansion).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut phase = Phase::Spaces;
    let mut blank_ok = false;
    let mut pos = 0;
    while pos < chars.len() {
        let mut c = chars[pos];
        let at_end = pos + 1 == chars.len();
        pos += 1;
        if phase == Phase::Spaces {
            if is_space(c) {
                continue;
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if is_space(c) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                continue;
            }
            if c == '\'' || c == '"' {
                phase = Phase::Quote(c);
                blank_ok = true;
            }
            if c == escape {
                if at_end {
                    continue;
                }
                // An escaped character stays escaped here; expansion removes the escape.
                word.push(c);
                c = chars[pos];
                pos += 1;
            }
            word.push(c);
            continue;
        }
        if let Phase::Quote(q) = phase {
            if c == q {
                phase = Phase::Word;
            }
            if c == escape && q != '\'' {
                if at_end {
                    phase = Phase::Word;
                    continue;
                }
                word.push(c);
                c = chars[pos];
                pos += 1;
            }
            word.push(c);
        }
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// `ENV`/`LABEL`: either the old `key value…` form (value is the rest of the line) or a list
/// of `key=value` words. Each pair becomes three arguments: key, value, separator.
fn parse_name_val(
    rest: &str,
    what: &str,
    escape: char,
    node: &mut Node,
) -> Result<(), ParseErrorKind> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(());
    };
    if !first.contains('=') {
        let Some(pos) = rest.find(is_blank) else {
            return Err(ParseErrorKind::MissingValue(what.to_string()));
        };
        let key = &rest[..pos];
        let value = rest[pos..].trim_start_matches(is_blank);
        node.args = vec![key.to_string(), value.to_string(), String::new()];
        return Ok(());
    }
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals(word));
        };
        node.args
            .extend([key.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(())
}

fn whitespace_list(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_blank)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads a JSON array of strings at the start of `rest`. Like BuildKit (Go's streaming JSON
/// decoder) only the first JSON value counts; anything after it is ignored.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, ParseErrorKind> {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
    let Some(Ok(serde_json::Value::Array(items))) = stream.next() else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(ParseErrorKind::JsonNotStrings),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn maybe_json(rest: &str, node: &mut Node) -> Result<(), ParseErrorKind> {
    if rest.is_empty() {
        return Ok(());
    }
    match parse_json(rest)? {
        Some(items) => {
            node.args = items;
            node.json = true;
        }
        None => node.args = vec![rest.to_string()],
    }
    Ok(())
}

fn maybe_json_to_list(rest: &str, node: &mut Node) -> Result<(), ParseErrorKind> {
    match parse_json(rest)? {
        Some(items) => {
            node.args = items;
            node.json = true;
        }
        None => node.args = whitespace_list(rest),
    }
    Ok(())
}

/// `HEALTHCHECK [flags] TYPE [command]`: the first word is the type (`CMD`, `NONE`), the rest
/// is a command in JSON or shell form.
fn parse_health(rest: &str, node: &mut Node) -> Result<(), ParseErrorKind> {
    let sep = rest.find(is_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(());
    }
    let (typ, cmd) = rest.split_at(sep);
    let mut inner = Node::default();
    maybe_json(cmd.trim_start_matches(is_space), &mut inner)?;
    node.args.push(typ.to_string());
    node.args.extend(inner.args);
    node.json = inner.json;
    Ok(())
}

/// Quotes a string as Go's `strconv.Quote` does, which is what BuildKit's dump prints.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `unicode.IsPrint`: graphic characters and the ASCII space.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    // Format characters (zero-width joiners, bidi marks, BOM) are not printable in Go.
    !matches!(c as u32, 0xad | 0x600..=0x605 | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0xfeff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(text: &str) -> Vec<String> {
        parse(text).unwrap().nodes.iter().map(Node::dump).collect()
    }

    #[test]
    fn heredocs_are_collected_with_their_bodies() {
        let p = parse(
            "FROM x\nRUN <<EOF bash\necho hi\nEOF\nCOPY <<-'A' <<B /dst/\n\tone\n\tA\ntwo\nB\n",
        )
        .unwrap();
        let run = &p.nodes[1];
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].content, "echo hi\n");
        assert!(run.heredocs[0].expand);
        let copy = &p.nodes[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[0].name, "A");
        assert!(copy.heredocs[0].chomp);
        assert!(!copy.heredocs[0].expand);
        assert_eq!(copy.heredocs[0].body(), "one\n");
        assert_eq!(copy.heredocs[1].content, "two\n");
        assert_eq!((copy.start_line, copy.end_line), (5, 9));
    }

    #[test]
    fn unterminated_heredoc_names_the_delimiter_and_line() {
        let e = parse("FROM x\n\nRUN cat <<END\nhello\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::UnterminatedHeredoc("END".into()));
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("line") && e.to_string().contains("END"));
    }

    #[test]
    fn json_form_disables_heredocs() {
        let p = parse("RUN [\"cat\", \"<<EOF\"]\nFROM x\n").unwrap();
        assert!(p.nodes[0].heredocs.is_empty());
        assert_eq!(p.nodes.len(), 2);
    }

    #[test]
    fn onbuild_heredoc() {
        let p = parse("FROM x\nONBUILD RUN <<EOF\nls\nEOF\n").unwrap();
        assert_eq!(p.nodes[1].heredocs[0].content, "ls\n");
    }

    #[test]
    fn trailing_double_escape_does_not_continue() {
        assert_eq!(dump("ENV A b\\\\\nENV C d\n").len(), 2);
    }

    #[test]
    fn duplicate_escape_directive_is_an_error() {
        let e = parse("# escape=`\n# escape=\\\nFROM x\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::DuplicateDirective("escape".into()));
        assert_eq!(e.line, 2);
    }

    #[test]
    fn bad_escape_directive_is_an_error() {
        let e = parse("# escape=x\nFROM x\n").unwrap_err();
        assert_eq!(e.reason(), "InvalidEscape");
    }

    #[test]
    fn syntax_directive_is_recorded_and_late_directives_are_comments() {
        let p = parse("# syntax=docker/dockerfile:1\nFROM x\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(p.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(p.escape, '\\');
        assert_eq!(p.nodes[1].args, vec!["a  b"]);
    }

    #[test]
    fn flags_with_quotes_and_double_dash() {
        let p = parse("COPY --chown=\"a b\" --link -- --weird /x\n").unwrap();
        assert_eq!(p.nodes[0].flags, vec!["--chown=a b", "--link"]);
        assert_eq!(p.nodes[0].args, vec!["--weird", "/x"]);
    }

    #[test]
    fn go_quote_matches_go() {
        assert_eq!(go_quote("a\"b\\c\u{0}é"), "\"a\\\"b\\\\c\\x00é\"");
        assert_eq!(go_quote("\u{a0}"), "\"\\u00a0\"");
    }

    #[test]
    fn crlf_line_endings() {
        let p = parse("FROM x\r\nRUN a \\\r\n  b\r\n").unwrap();
        assert_eq!(p.nodes[1].args, vec!["a   b"]);
    }
}
