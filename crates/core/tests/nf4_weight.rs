//! The device form of an NF4 weight: dequantized by tensor ops to exactly the values of the host algorithm
//! (which the memopt tests check against bitsandbytes), and a layer over it whose custom backward gives the input
//! gradient of plain autodiff through the dequantized weight.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::model::{Linear, LinearWeight, LlamaModel, ModelConfig, Nf4Weight, tokens_tensor};
use llmtrain_core::nf4::Nf4Tensor;

use crate::common;
use common::to_vec;

type A = Autodiff<CpuBackend>;

/// Deterministic values in [-0.5, 0.5) with an outlier every 97th, so blocks have different maxima.
fn values(n: usize, seed: u64) -> Vec<f32> {
    common::values(n, seed).iter().enumerate().map(|(i, v)| if i % 97 == 0 { 4.0 * v } else { 0.5 * v }).collect()
}

#[test]
fn dequantizing_on_the_device_gives_the_host_values_bit_for_bit() {
    let device = Default::default();
    // Whole blocks; a ragged last block; more than 256 blocks (two groups of the second level, the last short).
    for (shape, double) in [([8, 128], true), ([7, 100], true), ([7, 100], false), ([300, 64], true), ([33, 65], false)]
    {
        let host = values(shape[0] * shape[1], shape[1] as u64);
        let quantized = Nf4Tensor::quantize(&host, double);
        let weight = Nf4Weight::<CpuBackend>::new(quantized.clone(), shape, &device);
        let got = to_vec(weight.dequantize());
        let want = quantized.dequantize();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{shape:?} double={double}");
        let bytes = weight.storage_bytes();
        assert!(bytes.abs_diff(quantized.storage_bytes()) <= 32 + 255, "{bytes} vs {}", quantized.storage_bytes());
    }
}

fn input<B: Backend>(shape: [usize; 3], device: &B::Device) -> Tensor<B, 3> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, 7), shape), device)
}

#[test]
fn the_custom_backward_gives_the_plain_autodiff_gradients() {
    let device = Default::default();
    let (out_f, in_f) = (48, 80);
    let quantized = Nf4Tensor::quantize(&values(out_f * in_f, 3), true);
    let weight = Nf4Weight::<A>::new(quantized.clone(), [out_f, in_f], &device);
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let x = input::<A>([2, 5, in_f], &device).cast(dtype).require_grad();
        let upstream = input::<A>([2, 5, out_f], &device).cast(dtype);
        let fused = weight.forward(x.clone());
        // The plain path: autodiff through a constant dequantized weight.
        let w = weight.dequantize().cast(dtype);
        let plain = burn::tensor::module::linear(x.clone(), w.transpose(), None);
        assert_eq!(fused.dtype(), dtype.into());
        let out_diff = (fused.clone().cast(FloatDType::F32) - plain.clone().cast(FloatDType::F32)).abs().max();
        assert_eq!(out_diff.into_scalar(), 0.0, "{dtype:?}: the same forward");
        let g_fused = x.grad(&(fused * upstream.clone()).sum().backward()).unwrap();
        let g_plain = x.grad(&(plain * upstream).sum().backward()).unwrap();
        let diff: f32 = (g_fused.cast(FloatDType::F32) - g_plain.cast(FloatDType::F32)).abs().max().into_scalar();
        let tolerance = if dtype == FloatDType::F32 { 1e-5 } else { 1e-2 };
        assert!(diff <= tolerance, "{dtype:?}: input gradients differ by {diff}");
    }
}

#[test]
fn a_quantized_model_computes_with_the_dequantized_weights_and_holds_no_weight_parameters() {
    let device = Default::default();
    let config = ModelConfig::tiny_llama(96, 64, 2, 4, 2);
    let mut quantized = LlamaModel::<A>::init(&config, &device, 5);
    let params_before = quantized.named_params().len();
    quantized.quantize_nf4(true);
    assert!(quantized.is_quantized());
    assert_eq!(params_before - quantized.named_params().len(), 2 * 7, "4-bit weights are not parameters");
    // The same model with each weight replaced by its dequantized value, dense.
    let mut dense = LlamaModel::<A>::init(&config, &device, 6);
    dense.embed_tokens = quantized.embed_tokens.clone();
    dense.lm_head = quantized.lm_head.clone();
    for ((_, d), q) in dense.decoder_linears_mut().into_iter().zip(quantized.decoder_linears()) {
        assert!(matches!(q.weight, LinearWeight::Nf4(_)));
        *d = Linear::new(q.weight_value(), None);
    }
    let tokens = tokens_tensor::<A>(&[3, 17, 42, 9, 5, 61, 2, 11], 1, &device);
    let a = to_vec(quantized.forward(tokens.clone(), None));
    let b = to_vec(dense.forward(tokens, None));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "quantized vs dequantized-dense logits differ by {worst}");
}
