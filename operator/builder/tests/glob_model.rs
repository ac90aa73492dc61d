#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The glob automaton against a plain backtracking model of the same rules, on many small
//! generated patterns and paths (a fixed-seed generator, so failures reproduce).

use stagecoach_builder::pattern::{Flavor, Glob};

/// Backtracking reference: `*` = run of non-'/', `?` = one non-'/', `[ab]` = a or b,
/// and (path flavour) `**/` or inner `**` = empty or anything ending in '/', trailing `**` =
/// anything.
fn model(p: &[char], s: &[char], flavor: Flavor) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    if flavor == Flavor::Path && p.len() >= 2 && p[0] == '*' && p[1] == '*' {
        let mut rest = &p[2..];
        if rest.first() == Some(&'/') {
            rest = &rest[1..];
        }
        if rest.is_empty() {
            return true;
        }
        if model(rest, s, flavor) {
            return true;
        }
        return (0..s.len()).any(|i| s[i] == '/' && model(rest, &s[i + 1..], flavor));
    }
    match p[0] {
        '*' => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != '/')
            .any(|i| model(&p[1..], &s[i..], flavor)),
        '?' => !s.is_empty() && s[0] != '/' && model(&p[1..], &s[1..], flavor),
        '[' => {
            let close = p.iter().position(|&c| c == ']').unwrap();
            !s.is_empty() && p[1..close].contains(&s[0]) && model(&p[close + 1..], &s[1..], flavor)
        }
        c => !s.is_empty() && s[0] == c && model(&p[1..], &s[1..], flavor),
    }
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

#[test]
fn automaton_agrees_with_backtracking() {
    let mut rng = Lcg(42);
    let pattern_atoms = ["a", "b", "/", "*", "?", "[ab]", "**", "**/"];
    let path_atoms = ['a', 'b', '/'];
    for flavor in [Flavor::Component, Flavor::Path] {
        for _ in 0..3000 {
            let pattern: String = (0..1 + rng.next(6))
                .map(|_| pattern_atoms[rng.next(pattern_atoms.len())])
                .collect();
            let glob = Glob::new(&pattern, flavor).unwrap();
            let pc: Vec<char> = pattern.chars().collect();
            for _ in 0..20 {
                let path: String = (0..rng.next(7))
                    .map(|_| path_atoms[rng.next(path_atoms.len())])
                    .collect();
                let sc: Vec<char> = path.chars().collect();
                assert_eq!(
                    glob.matches(&path),
                    model(&pc, &sc, flavor),
                    "{flavor:?} pattern {pattern:?} path {path:?}"
                );
            }
        }
    }
}

#[test]
fn pathological_patterns_stay_fast() {
    let pattern = "*a".repeat(30) + "b";
    let glob = Glob::new(&pattern, Flavor::Component).unwrap();
    let input = "a".repeat(200);
    let start = std::time::Instant::now();
    assert!(!glob.matches(&input));
    assert!(start.elapsed().as_secs() < 2);
}
