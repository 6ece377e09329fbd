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

/// How the rate rises during warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmupType {
    /// step / warmup_steps (transformers; DeepSpeed's `warmup_type = "linear"`).
    #[default]
    Linear,
    /// ln(step + 1) / ln(warmup_steps) (DeepSpeed's WarmupLR default, `warmup_type = "log"`).
    Log,
}

/// A learning-rate schedule: the multiplier of the peak rate after `step` optimizer updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    #[serde(default)]
    pub warmup_type: WarmupType,
}

impl Schedule {
    /// The same rate at every step.
    pub fn constant(lr: f64) -> Self {
        Self {
            kind: ScheduleKind::Constant,
            peak_lr: lr,
            warmup_steps: 0,
            total_steps: 0,
            warmup_type: WarmupType::Linear,
        }
    }

    /// The rate for the update that follows `step` completed updates (HF: the first update uses `lr_lambda(0)`).
    pub fn lr(&self, step: u64) -> f64 {
        let s = step as f64;
        let warmup = self.warmup_steps as f64;
        if step < self.warmup_steps {
            return match self.warmup_type {
                WarmupType::Linear => self.peak_lr * s / warmup.max(1.0),
                WarmupType::Log => self.peak_lr * (s + 1.0).ln() / warmup.max(2.0).ln(),
            };
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

    /// DeepSpeed's WarmupLR with `warmup_type = "log"` (its default): min_lr + (max_lr − min_lr) · ln(t + 1) /
    /// ln(warmup_num_steps), here with min_lr 0, then the peak.
    #[test]
    fn log_warmup_follows_deepspeeds_warmup_lr() {
        let s = Schedule { warmup_type: WarmupType::Log, warmup_steps: 100, ..Schedule::constant(1e-3) };
        assert_eq!(s.lr(0), 0.0);
        for t in [1u64, 10, 50, 99] {
            let deepspeed = 1e-3 * ((t + 1) as f64).ln() / 100f64.ln();
            assert!((s.lr(t) - deepspeed).abs() < 1e-15, "step {t}");
        }
        assert_eq!(s.lr(100), 1e-3);
    }

    #[test]
    fn warmup_then_decay_like_transformers() {
        let s =
            |kind| Schedule { kind, peak_lr: 1.0, warmup_steps: 10, total_steps: 110, warmup_type: WarmupType::Linear };
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
