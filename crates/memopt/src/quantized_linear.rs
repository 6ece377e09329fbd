//! A frozen linear layer whose weight is stored in NF4 (QLoRA's base layer): the weight is dequantized on the
//! fly for each forward pass and is never a parameter, so it gets no gradient and no optimizer state, while the
//! input's gradient flows through it.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::nf4::Nf4Tensor;

/// A weight or bias whose size does not match the layer's shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a [{out_features}, {in_features}] layer got {weight} weight values and {bias:?} bias values")]
pub struct ShapeError {
    pub weight: usize,
    pub bias: Option<usize>,
    pub out_features: usize,
    pub in_features: usize,
}

/// `y = x · dequantize(W)ᵀ + b` with `W` `[out, in]` (Hugging Face's layout) held in NF4.
#[derive(Debug, Clone)]
pub struct Nf4Linear {
    pub weight: Nf4Tensor,
    pub out_features: usize,
    pub in_features: usize,
    pub bias: Option<Vec<f32>>,
}

impl Nf4Linear {
    /// Quantizes an f32 `[out, in]` weight (row-major, as safetensors stores it), with double quantization.
    pub fn quantize(
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Self, ShapeError> {
        if weight.len() != out_features * in_features || bias.as_ref().is_some_and(|b| b.len() != out_features) {
            return Err(ShapeError {
                weight: weight.len(),
                bias: bias.as_ref().map(Vec::len),
                out_features,
                in_features,
            });
        }
        Ok(Self { weight: Nf4Tensor::quantize(weight, true), out_features, in_features, bias })
    }

    /// The dequantized weight `[out, in]` on `device` (f32, the compute precision here).
    pub fn dequantized<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        let data = TensorData::new(self.weight.dequantize(), [self.out_features, self.in_features]);
        Tensor::from_data(data, device)
    }

    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let device = x.device();
        let weight = self.dequantized::<B>(&device);
        let bias =
            self.bias.as_ref().map(|b| Tensor::<B, 1>::from_data(TensorData::new(b.clone(), [b.len()]), &device));
        burn::tensor::module::linear(x, weight.transpose(), bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use llmtrain_core::device::CpuBackend;

    type A = Autodiff<CpuBackend>;

    #[test]
    fn forward_uses_the_dequantized_weight_and_only_the_input_gets_a_gradient() {
        let device = Default::default();
        let (out_f, in_f) = (8, 128);
        let weight: Vec<f32> = (0..out_f * in_f).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
        let layer = Nf4Linear::quantize(&weight, out_f, in_f, Some(vec![0.5; out_f])).unwrap();
        assert!(Nf4Linear::quantize(&weight, out_f, in_f + 1, None).is_err());
        let x = Tensor::<A, 2>::from_data(
            TensorData::new((0..3 * in_f).map(|i| (i % 7) as f32 * 0.1).collect(), [3, in_f]),
            &device,
        )
        .require_grad();
        let y = layer.forward(x.clone());
        let reference = x.clone().matmul(layer.dequantized::<A>(&device).transpose()).add_scalar(0.5);
        let diff: f32 = (y.clone() - reference).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
        // Quantization moved the weights, but not far: NF4 keeps each within a level of its block's scale.
        let dequantized = layer.weight.dequantize();
        let worst = weight.iter().zip(&dequantized).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst > 0.0 && worst < 0.1, "{worst}");
        let grads = y.sum().backward();
        let gx = x.grad(&grads).expect("the input gets a gradient");
        assert_eq!(gx.dims(), [3, in_f]);
    }
}
