//! What a run shows while it trains: the progress bar on a terminal, JSON lines otherwise, and the throughput
//! and communication share of the window since the last log line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use llmtrain_accel::Accelerator;

/// Tokens (all ranks) and communication time since the last log line, for throughput and the share of time
/// spent all-reducing.
pub(crate) struct Window {
    start: Instant,
    pub tokens: usize,
    comm_at_start: Duration,
}

impl Window {
    pub fn new<A: AutodiffBackend>(accelerator: &Accelerator<A>) -> Self {
        Self { start: Instant::now(), tokens: 0, comm_at_start: accelerator.communication_time() }
    }

    pub fn rate(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn comm_share<A: AutodiffBackend>(&self, accelerator: &Accelerator<A>) -> f64 {
        let comm = (accelerator.communication_time() - self.comm_at_start).as_secs_f64();
        comm / self.start.elapsed().as_secs_f64().max(1e-9)
    }
}

pub(crate) fn progress_bar(total: u64, position: u64) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(position);
    bar
}

/// The figures the progress bar shows on a terminal (where the JSON lines are not printed).
pub(crate) fn bar_message(loss: f64, lr: f64, eval_loss: Option<f64>, tokens_per_sec: f64) -> String {
    let eval = eval_loss.map(|e| format!(" eval {e:.4}")).unwrap_or_default();
    format!("loss {loss:.4}{eval} lr {lr:.2e} {tokens_per_sec:.0} tok/s")
}

/// One JSON line per logged step on stderr when it is not a terminal (a log file, a pipe, a scheduler's
/// output); on a terminal the progress bar shows the figures instead. `metrics.jsonl` holds every record either way.
pub(crate) fn log_line(bar: &ProgressBar, record: &serde_json::Value) {
    tracing::info!("{record}");
    if bar.is_hidden() {
        eprintln!("{record}");
    }
}
