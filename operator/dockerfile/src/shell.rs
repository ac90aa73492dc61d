//! Shell-word expansion as BuildKit's Dockerfile frontend performs it on ARG, ENV, FROM,
//! COPY, ADD, WORKDIR and the other instructions that expand variables (never on RUN, whose
//! text goes to the shell untouched).

use std::collections::BTreeSet;

/// Where variable values come from during expansion.
pub trait Env {
    /// The value of `name`, or `None` when it is not set. An empty value is "set".
    fn lookup(&self, name: &str) -> Option<&str>;
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

/// Errors from expansion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// Placeholder until the lexer lands.
    #[error("{0}")]
    Other(String),
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
        let _ = env;
        Err(ShellError::Other(format!("not implemented: {word}")))
    }

    /// Expands `word` and splits it into fields the way BuildKit's `ProcessWords` does.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        let _ = env;
        Err(ShellError::Other(format!("not implemented: {word}")))
    }
}
