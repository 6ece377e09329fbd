//! Lightning's `ThroughputMonitor`: the model FLOP/s a run achieves and, where the devices' peak is known, the
//! model FLOPs utilisation (MFU). Tokens per second are the trainer's own `tokens_per_sec`.

use serde_json::{Map, Value, json};

use super::Callback;
use crate::error::Result;

pub const FLOPS_METRIC: &str = "device/flops_per_sec";
pub const MFU_METRIC: &str = "device/mfu";

/// Adds `device/flops_per_sec` (all ranks) and, with a peak, `device/mfu` to each training record.
#[derive(Debug, Clone)]
pub struct ThroughputMonitor {
    /// Training FLOPs (forward and backward) per token of the model.
    flops_per_token: f64,
    /// Peak FLOP/s of the whole world (one device's peak × the devices), if known.
    peak_flops: Option<f64>,
}

impl ThroughputMonitor {
    /// `peak_flops_per_device` is one device's peak at the run's precision; `devices` the ranks.
    pub fn new(flops_per_token: f64, peak_flops_per_device: Option<f64>, devices: usize) -> Self {
        Self { flops_per_token, peak_flops: peak_flops_per_device.map(|peak| peak * devices as f64) }
    }
}

impl Callback for ThroughputMonitor {
    fn name(&self) -> &'static str {
        "throughput_monitor"
    }

    fn metric_names(&self) -> Vec<&'static str> {
        if self.peak_flops.is_some() { vec![FLOPS_METRIC, MFU_METRIC] } else { vec![FLOPS_METRIC] }
    }

    fn on_log(&mut self, record: &mut Map<String, Value>) -> Result<()> {
        let Some(tokens_per_sec) = record.get("tokens_per_sec").and_then(Value::as_f64) else {
            return Ok(());
        };
        let flops = tokens_per_sec * self.flops_per_token;
        record.insert(FLOPS_METRIC.into(), json!(flops));
        if let Some(peak) = self.peak_flops.filter(|peak| *peak > 0.0) {
            record.insert(MFU_METRIC.into(), json!(flops / peak));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_and_mfu_follow_tokens_per_sec_and_validation_records_are_left_alone() {
        let mut monitor = ThroughputMonitor::new(600.0, Some(1e6), 2);
        let mut record = Map::new();
        record.insert("tokens_per_sec".into(), json!(1000.0));
        monitor.on_log(&mut record).unwrap();
        assert_eq!((record[FLOPS_METRIC].as_f64(), record[MFU_METRIC].as_f64()), (Some(6e5), Some(0.3)));
        let mut validation = Map::new();
        validation.insert("eval_loss".into(), json!(1.0));
        monitor.on_log(&mut validation).unwrap();
        assert_eq!(validation.len(), 1);
        assert_eq!(ThroughputMonitor::new(1.0, None, 1).metric_names(), [FLOPS_METRIC]);
    }
}
