//! JUnit XML for a suite: one test case per plan (quick-junit). Failures
//! carry the unmet expectations and the first lost messages; system-out
//! holds the summary; properties hold the seed and the run dir.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

/// How one plan of a suite went.
pub struct PlanResult {
    /// The plan's name (or its file when it could not be read).
    pub name: String,
    pub file: String,
    pub duration: Duration,
    pub outcome: PlanOutcome,
}

/// Met, not met (with why), or could not run.
pub enum PlanOutcome {
    Ran {
        met: bool,
        seed: u64,
        run_dir: String,
        /// The summary table (the test case's output).
        summary: String,
        /// The counts line (see `report::counts_line`).
        counts: String,
        unmet: Vec<String>,
        first_lost: Vec<String>,
    },
    Error {
        code: i32,
        message: String,
    },
}

/// The JUnit report of a suite.
pub fn report(suite: &str, results: &[PlanResult]) -> Report {
    let mut ts = TestSuite::new(suite);
    let mut total = Duration::ZERO;
    for r in results {
        total += r.duration;
        let mut case = match &r.outcome {
            PlanOutcome::Ran { met: true, .. } => {
                TestCase::new(r.name.as_str(), TestCaseStatus::success())
            }
            PlanOutcome::Ran {
                met: false,
                unmet,
                first_lost,
                ..
            } => {
                let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                st.set_message(format!("expectations not met: {}", unmet.join("; ")));
                st.set_type("expectations");
                let mut description = unmet.join("\n");
                if !first_lost.is_empty() {
                    description += "\nfirst lost messages:\n";
                    description += &first_lost.join("\n");
                }
                st.set_description(description);
                TestCase::new(r.name.as_str(), st)
            }
            PlanOutcome::Error { code, message } => {
                let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
                st.set_message(message.as_str());
                st.set_type(format!("exit code {code}"));
                TestCase::new(r.name.as_str(), st)
            }
        };
        case.set_classname(format!("unlost.{suite}"));
        case.set_time(r.duration);
        case.add_property(Property::new("plan", r.file.as_str()));
        if let PlanOutcome::Ran {
            seed,
            run_dir,
            summary,
            ..
        } = &r.outcome
        {
            case.add_property(Property::new("seed", seed.to_string()));
            case.add_property(Property::new("run_dir", run_dir.as_str()));
            case.set_system_out(summary.as_str());
        }
        ts.add_test_case(case);
    }
    ts.set_time(total);
    let mut report = Report::new("unlost");
    report.add_test_suite(ts);
    report.set_time(total);
    report
}
