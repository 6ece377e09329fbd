//! The progress bar (Lightning's `TQDMProgressBar`, with indicatif): on a terminal, the step, ETA, live loss, the
//! latest eval loss, the learning rate and tokens/s; otherwise (a log file, a pipe, a scheduler's output) one JSON
//! line per record on stderr. `metrics.jsonl` holds every record either way.

use std::io::IsTerminal;

use indicatif::ProgressStyle;
use serde_json::{Map, Value};

use super::Callback;
use crate::error::Result;

/// The Trainer shows one on rank 0 unless `enable_progress_bar` is off.
#[derive(Debug, Default)]
pub struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
    eval_loss: Option<f64>,
    tokens_per_sec: Option<f64>,
}

impl ProgressBar {
    pub fn new() -> Self {
        Self::default()
    }

    fn terminal(&self) -> Option<&indicatif::ProgressBar> {
        self.bar.as_ref().filter(|bar| !bar.is_hidden())
    }
}

impl Callback for ProgressBar {
    fn name(&self) -> &'static str {
        "progress_bar"
    }

    fn on_train_start(&mut self, step: u64, max_steps: u64) -> Result<()> {
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(max_steps)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} ({per_sec}, ETA {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(step);
        self.bar = Some(bar);
        Ok(())
    }

    fn on_train_batch_end(&mut self, step: u64, loss: f64, lr: f64) -> Result<()> {
        if let Some(bar) = self.terminal() {
            bar.set_position(step);
            let eval = self.eval_loss.map(|e| format!(" eval {e:.4}")).unwrap_or_default();
            let rate = self.tokens_per_sec.map(|r| format!(" {r:.0} tok/s")).unwrap_or_default();
            bar.set_message(format!("loss {loss:.4}{eval} lr {lr:.2e}{rate}"));
        }
        Ok(())
    }

    fn on_log(&mut self, record: &mut Map<String, Value>) -> Result<()> {
        self.eval_loss = record.get("eval_loss").and_then(Value::as_f64).or(self.eval_loss);
        self.tokens_per_sec = record.get("tokens_per_sec").and_then(Value::as_f64).or(self.tokens_per_sec);
        let line = Value::Object(record.clone());
        tracing::info!("{line}");
        if self.terminal().is_none() {
            eprintln!("{line}");
        }
        Ok(())
    }

    fn on_train_end(&mut self) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        Ok(())
    }
}
