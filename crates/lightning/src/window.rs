//! The throughput and communication share of the window since the last log record.

use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
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
