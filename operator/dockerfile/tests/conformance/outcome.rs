//! The tally of one conformance set: how many cases ran, how many passed, what failed.

#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: usize,
    pub total: usize,
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn ratio(&self) -> String {
        format!("{}/{}", self.passed, self.total)
    }

    pub fn record(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.total += 1;
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(what());
        }
    }
}
