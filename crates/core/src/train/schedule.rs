//! Learning-rate schedules with linear warmup, as transformers' `get_scheduler` defines them.

use serde::{Deserialize, Serialize};

/// The shape of the learning rate after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

/// A learning-rate schedule: the multiplier of the peak rate after `step` optimizer updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// The same rate at every step.
    pub fn constant(lr: f64) -> Self {
        Self { kind: ScheduleKind::Constant, peak_lr: lr, warmup_steps: 0, total_steps: 0 }
    }

    /// The rate for the update that follows `step` completed updates (HF: the first update uses `lr_lambda(0)`).
    pub fn lr(&self, step: u64) -> f64 {
        let s = step as f64;
        let warmup = self.warmup_steps as f64;
        if step < self.warmup_steps {
            return self.peak_lr * s / warmup.max(1.0);
        }
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let span = (self.total_steps as f64 - warmup).max(1.0);
                ((self.total_steps as f64 - s) / span).max(0.0)
            }
            ScheduleKind::Cosine => {
                let span = (self.total_steps as f64 - warmup).max(1.0);
                let progress = (s - warmup) / span;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        self.peak_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_like_transformers() {
        let s = |kind| Schedule { kind, peak_lr: 1.0, warmup_steps: 10, total_steps: 110 };
        for kind in [ScheduleKind::Constant, ScheduleKind::Linear, ScheduleKind::Cosine] {
            assert_eq!(s(kind).lr(0), 0.0);
            assert!((s(kind).lr(5) - 0.5).abs() < 1e-12);
            assert!((s(kind).lr(10) - 1.0).abs() < 1e-12);
        }
        assert!((s(ScheduleKind::Linear).lr(60) - 0.5).abs() < 1e-12);
        assert!((s(ScheduleKind::Cosine).lr(60) - 0.5).abs() < 1e-12);
        assert_eq!(s(ScheduleKind::Linear).lr(110), 0.0);
        assert!(s(ScheduleKind::Cosine).lr(110).abs() < 1e-12);
        assert_eq!(s(ScheduleKind::Constant).lr(1000), 1.0);
    }
}
