//! Helpers shared by the custom-op tests (flash attention, fused loss, fused RMSNorm/SwiGLU/RoPE, NF4 weights).
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

/// Deterministic values in [-1, 1) from a 64-bit LCG.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A tensor's values as f32 on the host.
pub fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().convert::<f32>().to_vec::<f32>().expect("f32 data")
}

/// The largest elementwise difference of two tensors of the same shape, in f32.
pub fn max_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    let (a, b) = (to_vec(a), to_vec(b));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
