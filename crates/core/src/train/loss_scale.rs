//! fp16 loss scaling with DeepSpeed's semantics (`deepspeed/runtime/fp16/loss_scaler.py`).
//!
//! The loss is multiplied by the scale before backward so small fp16 gradients do not flush to zero; the
//! gradients are divided by it before the optimizer step. A step whose gradients hold an inf or NaN is skipped.
//! Dynamic scaling lowers the scale by `factor` on an overflow once `hysteresis` overflows have been absorbed
//! (the hysteresis counter is refilled only when the scale grows), never below the floor, and raises it after
//! `window` steps without an overflow.

use serde::{Deserialize, Serialize};

/// What a scaler is built from: DeepSpeed's `fp16` section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaleConfig {
    /// `0` for dynamic scaling, otherwise a fixed scale.
    pub loss_scale: f64,
    pub initial_scale_power: u32,
    pub window: u64,
    pub hysteresis: u32,
    pub min_scale: f64,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self { loss_scale: 0.0, initial_scale_power: 16, window: 1000, hysteresis: 2, min_scale: 1.0 }
    }
}

/// The scaler's whole state; it goes into checkpoints so a resumed run continues with the same scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub dynamic: bool,
    pub window: u64,
    pub min_scale: f64,
    pub delayed_shift: u32,
    pub cur_hysteresis: u32,
    /// Updates seen (DeepSpeed's `cur_iter`).
    pub iteration: i64,
    pub last_overflow_iteration: i64,
    /// Optimizer steps skipped because of an overflow.
    pub skipped_steps: u64,
}

/// The scale cannot go lower and the gradients still overflow: training cannot make progress.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("fp16 gradients overflow at the minimum loss scale {0}; use bf16 or lower the learning rate")]
pub struct ScaleAtMinimum(pub f64);

const FACTOR: f64 = 2.0;

impl LossScaler {
    pub fn new(config: LossScaleConfig) -> Self {
        let dynamic = config.loss_scale == 0.0;
        let scale = if dynamic { 2f64.powi(config.initial_scale_power as i32) } else { config.loss_scale };
        Self {
            scale,
            dynamic,
            window: config.window,
            min_scale: config.min_scale,
            delayed_shift: config.hysteresis,
            cur_hysteresis: config.hysteresis,
            iteration: 0,
            last_overflow_iteration: -1,
            skipped_steps: 0,
        }
    }

    /// Records one step's outcome: `overflow` means its gradients held an inf or NaN and it was skipped.
    pub fn update(&mut self, overflow: bool) -> Result<(), ScaleAtMinimum> {
        if overflow {
            self.skipped_steps += 1;
        }
        if !self.dynamic {
            return Ok(());
        }
        if overflow {
            if self.delayed_shift == 1 || self.cur_hysteresis == 1 {
                if self.scale == self.min_scale {
                    return Err(ScaleAtMinimum(self.scale));
                }
                self.scale = (self.scale / FACTOR).max(self.min_scale);
            } else {
                self.cur_hysteresis -= 1;
            }
            self.last_overflow_iteration = self.iteration;
        } else if (self.iteration - self.last_overflow_iteration) % self.window as i64 == 0 {
            self.cur_hysteresis = self.delayed_shift;
            self.scale *= FACTOR;
        }
        self.iteration += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler(window: u64, hysteresis: u32) -> LossScaler {
        LossScaler::new(LossScaleConfig { window, hysteresis, ..Default::default() })
    }

    #[test]
    fn starts_at_two_to_the_sixteen() {
        assert_eq!(scaler(1000, 2).scale, 65536.0);
    }

    #[test]
    fn hysteresis_absorbs_the_first_overflow() {
        let mut s = scaler(1000, 2);
        s.update(true).unwrap();
        assert_eq!((s.scale, s.cur_hysteresis, s.skipped_steps), (65536.0, 1, 1));
        s.update(true).unwrap();
        assert_eq!((s.scale, s.cur_hysteresis, s.skipped_steps), (32768.0, 1, 2));
        // Hysteresis is not refilled by good steps, only when the scale grows: the next overflow halves at once.
        s.update(false).unwrap();
        s.update(true).unwrap();
        assert_eq!(s.scale, 16384.0);
    }

    /// The sequence DeepSpeed's `DynamicLossScaler.update_scale` produces for the same overflow pattern
    /// (window 4, hysteresis 2, from 2^16), worked through by hand from its source.
    #[test]
    fn follows_deepspeeds_sequence() {
        let mut s = scaler(4, 2);
        let overflows = [false, false, false, false, true, true, false, false, false, false, false, true];
        let mut scales = Vec::new();
        for o in overflows {
            s.update(o).unwrap();
            scales.push(s.scale);
        }
        // iter 0: (0 - -1) % 4 = 1 → no growth; iter 3: 4 % 4 = 0 → ×2.
        assert_eq!(
            scales,
            [
                65536.0, 65536.0, 65536.0, 131072.0, 131072.0, 65536.0, 65536.0, 65536.0, 65536.0, 131072.0, 131072.0,
                131072.0
            ]
        );
        assert_eq!(s.skipped_steps, 3);
    }

    #[test]
    fn stops_at_the_floor() {
        let mut s = LossScaler::new(LossScaleConfig { initial_scale_power: 1, hysteresis: 1, ..Default::default() });
        s.update(true).unwrap();
        assert_eq!(s.scale, 1.0);
        assert_eq!(s.update(true), Err(ScaleAtMinimum(1.0)));
    }

    #[test]
    fn a_static_scale_never_moves() {
        let mut s = LossScaler::new(LossScaleConfig { loss_scale: 128.0, ..Default::default() });
        for _ in 0..5 {
            s.update(true).unwrap();
        }
        assert_eq!((s.scale, s.skipped_steps), (128.0, 5));
    }
}
