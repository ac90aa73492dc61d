//! A quick, deterministic stand-in for the fuzzer that runs with the normal tests: thousands
//! of random Dockerfile-like inputs built from the tokens that stress the parser (quotes,
//! escapes, continuations, heredocs, flags, JSON) must never make parsing, planning or
//! expansion panic. The coverage-guided fuzzer lives in `fuzz/` (cargo fuzz).

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use stagecoach_dockerfile::planner::{PlanOptions, plan_text};
use stagecoach_dockerfile::shell::ShellLex;

const TOKENS: &[&str] = &[
    "FROM ",
    "RUN ",
    "COPY ",
    "ADD ",
    "ENV ",
    "ARG ",
    "LABEL ",
    "ONBUILD ",
    "HEALTHCHECK ",
    "CMD ",
    "SHELL ",
    "WORKDIR ",
    "USER ",
    "EXPOSE ",
    "VOLUME ",
    "STOPSIGNAL ",
    "MAINTAINER ",
    "AS ",
    "as ",
    "scratch",
    "alpine",
    "x",
    "0",
    "1",
    "9",
    "--from=",
    "--mount=",
    "type=cache,",
    "target=/t",
    "--chown=",
    "--link",
    "--",
    "-",
    "=",
    "\"",
    "'",
    "\\",
    "`",
    "$",
    "${",
    "}",
    ":-",
    ":+",
    ":?",
    "#",
    "%",
    "##",
    "/",
    "[",
    "]",
    ",",
    "<<",
    "<<-",
    "EOF",
    "\n",
    "\r\n",
    "\t",
    " ",
    "  ",
    "é",
    "# escape=`\n",
    "# syntax=x\n",
    "\\\n",
    "`\n",
    "[\"a\", \"b\"]",
    "[1]",
    "{",
    "\u{feff}",
];

/// xorshift64*: a tiny deterministic generator, so a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_inputs_never_panic() {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let env: Vec<(String, String)> = vec![("A".into(), "a b".into()), ("E".into(), String::new())];
    for case in 0..20_000 {
        let len = (rng.next() % 40) as usize;
        let text: String = (0..len)
            .map(|_| TOKENS[(rng.next() % TOKENS.len() as u64) as usize])
            .collect();
        let result = std::panic::catch_unwind(|| {
            let _ = plan_text(&text, &PlanOptions::default());
            if let Ok(parsed) = stagecoach_dockerfile::parser::parse(&text) {
                for node in &parsed.nodes {
                    let _ = node.dump();
                }
            }
            for escape in ['\\', '`'] {
                let lex = ShellLex::new(escape);
                let _ = lex.process_word(&text, &env);
                let _ = lex.process_words(&text, &env);
            }
        });
        assert!(result.is_ok(), "case {case} panicked on input {text:?}");
    }
}
