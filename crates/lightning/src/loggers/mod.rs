//! Where a run's metric records go (Lightning's loggers), all in the run's output directory: `metrics.jsonl`
//! always (DESIGN.md's metrics contract, which the loss curve and the run summary read back), and on request
//! Lightning's CSV layout (`metrics.csv`, `hparams.yaml`) and TensorBoard event files (`tensorboard/`).
//! `[logging] loggers = ["jsonl", "csv", "tensorboard"]` picks them.

pub mod csv;
mod section;
pub mod tensorboard;

use std::path::{Path, PathBuf};

use llmtrain_core::train::metrics::{METRICS_FILE, MetricsLog};
use llmtrain_core::train::plot::LOSS_CURVE_FILE;
use serde_json::{Map, Value};

pub use section::{LoggerKind, LoggingSection};

use crate::error::Result;

/// Everything a run writes into its output directory besides its checkpoints: what a new run refuses to replace
/// unasked, and what `--overwrite` deletes (nothing else there is touched).
pub const RUN_OUTPUTS: &[&str] =
    &["final", METRICS_FILE, LOSS_CURVE_FILE, csv::CSV_FILE, csv::HPARAMS_FILE, tensorboard::TENSORBOARD_DIR];

/// One destination of the run's metric records (Lightning's `Logger`).
pub trait Logger {
    /// Lightning's `log_metrics`: one record, a JSON object holding its `step` and named values.
    fn log_metrics(&mut self, record: &Map<String, Value>) -> Result<()>;
}

/// The run's loggers (rank 0 holds them): `metrics.jsonl` (core's `MetricsLog`, the contract's writer) and the
/// ones the config asks for besides.
pub struct Loggers {
    jsonl: MetricsLog,
    others: Vec<Box<dyn Logger>>,
    /// The other loggers start with the first record, so a run that fails before it leaves only an empty
    /// `metrics.jsonl` behind (not an "earlier run" a new one must be told to replace).
    pending: Option<Pending>,
}

struct Pending {
    out: PathBuf,
    kinds: Vec<LoggerKind>,
    resume_step: Option<u64>,
    hparams: Value,
}

impl Loggers {
    /// Opens each logger in `out`: afresh, or, resuming after `resume_step`, keeping what was logged up to that
    /// step (a killed run may have logged steps the resumed run redoes). `hparams` is the run's configuration,
    /// for the loggers that record it.
    pub fn open(out: &Path, kinds: &[LoggerKind], resume_step: Option<u64>, hparams: &Value) -> Result<Self> {
        let jsonl = MetricsLog::open(out, resume_step)?;
        let pending = Pending { out: out.to_path_buf(), kinds: kinds.to_vec(), resume_step, hparams: hparams.clone() };
        Ok(Self { jsonl, others: Vec::new(), pending: Some(pending) })
    }

    /// Logs `record` (a JSON object with its `step`) to every logger.
    pub fn log(&mut self, record: &Value) -> Result<()> {
        let Value::Object(fields) = record else {
            return Err(crate::LightningError::Invalid(format!("a metric record must be a JSON object: {record}")));
        };
        if let Some(pending) = self.pending.take() {
            for kind in pending.kinds {
                let (out, step) = (&pending.out, pending.resume_step);
                match kind {
                    LoggerKind::Jsonl => {}
                    LoggerKind::Csv => self.others.push(Box::new(csv::CsvLogger::open(out, step, &pending.hparams)?)),
                    LoggerKind::Tensorboard => {
                        self.others.push(Box::new(tensorboard::TensorBoardLogger::open(out, step)?))
                    }
                }
            }
        }
        self.jsonl.write(record)?;
        for logger in &mut self.others {
            logger.log_metrics(fields)?;
        }
        Ok(())
    }

    /// Every record of `metrics.jsonl` so far (the loss curve and the run summary read them).
    pub fn read_all(&self) -> Result<Vec<Value>> {
        Ok(self.jsonl.read_all()?)
    }
}
