//! The decision's own account of itself: every row of the decision table it passed, failed or
//! skipped, with why. `keyward explain` and `keyward audit` print this trace; the data path
//! passes [`NoTrace`], whose calls compile to nothing (details are built lazily).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Pass,
    Fail,
    /// Not relevant for this key, route or request.
    Skip,
}

/// One row of the decision table as one request went through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceStep {
    /// The row's number in README's decision table (`"9c"`).
    pub row: &'static str,
    pub check: &'static str,
    pub result: StepResult,
    pub detail: String,
    /// The refusal's code, on the failing step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
}

/// Where the decision writes its steps.
pub trait Trace {
    /// Whether steps are kept at all: lets callers skip work that only feeds the trace.
    fn enabled(&self) -> bool;
    fn record(&mut self, step: TraceStep);

    fn pass(&mut self, row: &'static str, check: &'static str, detail: impl FnOnce() -> String) {
        if self.enabled() {
            self.record(TraceStep {
                row,
                check,
                result: StepResult::Pass,
                detail: detail(),
                code: None,
            });
        }
    }

    fn skip(&mut self, row: &'static str, check: &'static str, detail: impl FnOnce() -> String) {
        if self.enabled() {
            self.record(TraceStep {
                row,
                check,
                result: StepResult::Skip,
                detail: detail(),
                code: None,
            });
        }
    }

    fn fail(
        &mut self,
        row: &'static str,
        check: &'static str,
        code: &'static str,
        detail: impl FnOnce() -> String,
    ) {
        if self.enabled() {
            self.record(TraceStep {
                row,
                check,
                result: StepResult::Fail,
                detail: detail(),
                code: Some(code),
            });
        }
    }
}

/// The data path's trace: keeps nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn enabled(&self) -> bool {
        false
    }
    #[inline(always)]
    fn record(&mut self, _step: TraceStep) {}
}

/// Every step, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Steps(pub Vec<TraceStep>);

impl Trace for Steps {
    fn enabled(&self) -> bool {
        true
    }
    fn record(&mut self, step: TraceStep) {
        self.0.push(step);
    }
}
