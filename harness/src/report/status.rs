//! The status line on stderr, a reporter of run events: the run's start,
//! then elapsed/total, counts and active faults once a second (a progress
//! bar on a terminal, a plain line every 5 s otherwise, for CI logs).

use std::io::IsTerminal;
use std::sync::Mutex;

use crate::events::{Phase, Reporter, RunEvent, RunEventKind};

/// Writes the status line to stderr.
pub struct StatusLine {
    tty: bool,
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Default for StatusLine {
    fn default() -> Self {
        StatusLine {
            tty: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }
}

impl Reporter for StatusLine {
    fn event(&self, e: &RunEvent) {
        let mut bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        match &e.kind {
            RunEventKind::Started {
                plan, seed, dir, ..
            } => eprintln!("unlost: plan {plan} seed {seed}, run dir {}", dir.display()),
            RunEventKind::PhaseStarted(Phase::Workload) if self.tty => {
                *bar = Some(progress_bar());
            }
            RunEventKind::Progress {
                elapsed,
                total,
                counts: c,
                faults,
            } => {
                let active = faults.join(" ");
                let msg = format!(
                    "sent {} acked {} failed {} indeterminate {} delivered {} faults: {}",
                    c.sent,
                    c.acked,
                    c.failed,
                    c.indeterminate,
                    c.delivered,
                    if active.is_empty() { "none" } else { &active }
                );
                match bar.as_ref() {
                    Some(b) => {
                        b.set_length(total.as_secs().max(1));
                        b.set_position(elapsed.as_secs().min(total.as_secs()));
                        b.set_message(msg);
                    }
                    None if elapsed.as_secs() % 5 == 0 && elapsed.as_secs() > 0 => eprintln!(
                        "[{:>4.0}s/{:.0}s] {msg}",
                        elapsed.as_secs_f64(),
                        total.as_secs_f64()
                    ),
                    None => {}
                }
            }
            RunEventKind::PhaseFinished {
                phase: Phase::Workload,
                ..
            } => {
                if let Some(b) = bar.take() {
                    b.abandon();
                }
                eprintln!();
            }
            _ => {}
        }
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(1);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed:>4} [{bar:24.cyan/blue}] {pos}/{len}s {msg}",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    b
}
