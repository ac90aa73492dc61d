//! Fuzz target: no input may make the parser, the instruction reader, the planner or the
//! shell-word expander panic; they must return a value or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagecoach_dockerfile::planner::{plan_text, PlanOptions};
use stagecoach_dockerfile::shell::ShellLex;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = stagecoach_dockerfile::parser::parse(text) {
        for node in &parsed.nodes {
            let _ = node.dump();
        }
    }
    let _ = plan_text(text, &PlanOptions::default());
    let env: Vec<(String, String)> = vec![("A".into(), "a b".into())];
    for escape in ['\\', '`'] {
        let lex = ShellLex::new(escape);
        let _ = lex.process_word(text, &env);
        let _ = lex.process_words(text, &env);
    }
});
