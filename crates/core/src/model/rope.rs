//! Rotary position embeddings in transformers' rotate-half form, with linear and llama3 frequency scaling.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::config::{RopeConfig, RopeScaling};

/// Inverse frequencies for one head dimension; cos/sin tables are built from them for any positions.
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rotary {
    pub fn new(rope: &RopeConfig, head_dim: usize) -> Self {
        let half = head_dim / 2;
        let base: Vec<f64> = (0..half).map(|i| 1.0 / rope.theta.powf((2 * i) as f64 / head_dim as f64)).collect();
        let inv_freq = match rope.scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old_len = original_max_position_embeddings as f64;
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            // Smoothly interpolate between the scaled and unscaled frequency.
                            let smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        Self { inv_freq: inv_freq.into_iter().map(|f| f as f32).collect(), head_dim }
    }

    /// cos and sin tables, each `[rows, 1, cols, head_dim]`, for `positions` laid out as `rows × cols`.
    ///
    /// The angle is formed in f32 as transformers does (position × inverse frequency), then its cosine is taken.
    pub fn tables<B: Backend>(
        &self,
        positions: &[u32],
        rows: usize,
        cols: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        debug_assert_eq!(positions.len(), rows * cols);
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * self.head_dim);
        let mut sin = Vec::with_capacity(positions.len() * self.head_dim);
        for &p in positions {
            let start = cos.len();
            for &f in &self.inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
            // The rotate-half layout repeats the half-dimension table twice.
            cos.extend_from_within(start..start + half);
            sin.extend_from_within(start..start + half);
        }
        let shape = [rows, 1, cols, self.head_dim];
        (Tensor::from_data(TensorData::new(cos, shape), device), Tensor::from_data(TensorData::new(sin, shape), device))
    }
}

pub use crate::kernels::fused_ops::apply_rotary;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let plain = Rotary::new(&RopeConfig { theta: 500_000.0, scaling: RopeScaling::Default }, 64);
        let scaled = Rotary::new(
            &RopeConfig {
                theta: 500_000.0,
                scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                },
            },
            64,
        );
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((plain.inv_freq[last] / 8.0 - scaled.inv_freq[last]).abs() < 1e-12);
    }
}
