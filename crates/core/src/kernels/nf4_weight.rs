//! A frozen linear weight stored in NF4 (QLoRA's base layers): the [`crate::nf4`] codes and block scales live on
//! the device as integer and float tensors and are dequantized by tensor ops each time the layer runs, so only
//! ~4.1 bits per weight stay resident.
//!
//! Under autodiff, `x · dequantize(W)ᵀ` is one node whose backward dequantizes again (`dx = dy · W`), as
//! bitsandbytes' `MatMul4Bit` does: plain autodiff would keep every layer's dequantized weight alive until the
//! backward pass, four (or two) bytes per weight. The weight is a constant: it never gets a gradient.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};

use super::custom_op::{float, primitive};
use super::{Kernels, float_dtype, to_dtype};
use crate::nf4::{ABSMAX_BLOCK, BLOCK, BlockScales, NF4_CODE, Nf4Tensor, dynamic_map};

/// An `[out, in]` weight in NF4 on the device.
#[derive(Module, Debug)]
pub struct Nf4Weight<B: Backend> {
    /// Two 4-bit codes per byte (the even-index value in the high nibble), padded with the code of 0.0 to whole
    /// blocks: `[blocks · 32]`, stored as `u8` (as `i32` on a device without 8-bit integers: WGSL has none).
    packed: Tensor<B, 1, Int>,
    scales: Nf4Scales<B>,
    /// `[256, 2]`: the NF4 levels of a byte's high and low nibble, so one lookup decodes two values.
    pair_levels: Tensor<B, 2>,
    #[module(skip)]
    shape: [usize; 2],
}

/// The block maxima, plain or double-quantized.
#[derive(Module, Debug)]
pub enum Nf4Scales<B: Backend> {
    /// One f32 absmax per block `[blocks]`.
    Plain(Tensor<B, 1>),
    /// 8-bit codes of the dynamic map, scaled per 256 blocks.
    Double(DoubleQuantScales<B>),
}

/// `absmax[b] = dynamic[codes[b]] · absmax2[b / 256] + offset`.
#[derive(Module, Debug)]
pub struct DoubleQuantScales<B: Backend> {
    /// `[groups · 256]` (`u8`), padded with code 0.
    codes: Tensor<B, 1, Int>,
    /// bitsandbytes' dynamic map `[256]`.
    dynamic: Tensor<B, 1>,
    /// `[groups]`.
    absmax2: Tensor<B, 1>,
    #[module(skip)]
    offset: f32,
}

impl<B: Backend> Nf4Weight<B> {
    /// Puts a weight quantized on the host ([`Nf4Tensor::quantize`] of the row-major `[out, in]` values) on
    /// `device`.
    ///
    /// # Panics
    /// If the quantized tensor does not hold `out · in` values.
    pub fn new(quantized: Nf4Tensor, shape: [usize; 2], device: &B::Device) -> Self {
        let len = shape[0] * shape[1];
        assert_eq!(quantized.len, len, "an NF4 tensor of {} values for a {shape:?} weight", quantized.len);
        let blocks = len.div_ceil(BLOCK);
        const ZERO_PAIR: u8 = 0x77;
        let Nf4Tensor { mut packed, scales, .. } = quantized;
        packed.resize(blocks * BLOCK / 2, ZERO_PAIR);
        let code_dtype = if B::supports_dtype(device, DType::U8) { DType::U8 } else { DType::I32 };
        let bytes = |values: Vec<u8>| {
            let n = values.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(values, [n]), (device, code_dtype))
        };
        let floats = |values: Vec<f32>| {
            let n = values.len();
            Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device)
        };
        let scales = match scales {
            BlockScales::Plain(absmax) => Nf4Scales::Plain(floats(absmax)),
            BlockScales::Double { mut codes, offset, absmax2 } => {
                codes.resize(absmax2.len() * ABSMAX_BLOCK, 0);
                Nf4Scales::Double(DoubleQuantScales {
                    codes: bytes(codes),
                    dynamic: floats(dynamic_map()),
                    absmax2: floats(absmax2),
                    offset,
                })
            }
        };
        let pairs: Vec<f32> = (0..256).flat_map(|byte| [NF4_CODE[byte >> 4], NF4_CODE[byte & 0x0f]]).collect();
        let pair_levels = Tensor::from_data(TensorData::new(pairs, [256, 2]), device);
        Self { packed: bytes(packed), scales, pair_levels, shape }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.shape
    }

    /// The weight in f32, value for value what [`Nf4Tensor::dequantize`] gives (`NF4[code] · absmax[block]`).
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let len = self.shape[0] * self.shape[1];
        let blocks = len.div_ceil(BLOCK);
        let levels = self.pair_levels.clone().select(0, self.packed.clone()).reshape([blocks, BLOCK]);
        let values = (levels * self.absmax(blocks).reshape([blocks, 1])).reshape([blocks * BLOCK]);
        let values = if blocks * BLOCK == len { values } else { values.slice(0..len) };
        values.reshape(self.shape)
    }

    /// The `blocks` block maxima `[blocks]`.
    fn absmax(&self, blocks: usize) -> Tensor<B, 1> {
        match &self.scales {
            Nf4Scales::Plain(absmax) => absmax.clone(),
            Nf4Scales::Double(s) => {
                let groups = s.absmax2.dims()[0];
                let decoded = s.dynamic.clone().select(0, s.codes.clone()).reshape([groups, ABSMAX_BLOCK]);
                let absmax = (decoded * s.absmax2.clone().reshape([groups, 1])).add_scalar(s.offset);
                let absmax = absmax.reshape([groups * ABSMAX_BLOCK]);
                if groups * ABSMAX_BLOCK == blocks { absmax } else { absmax.slice(0..blocks) }
            }
        }
    }

    /// Device bytes the weight occupies (codes and scales; the two lookup tables, 3 KiB, not counted).
    pub fn storage_bytes(&self) -> usize {
        let len = self.shape[0] * self.shape[1];
        let code_bytes = self.packed.dtype().size();
        let scales = match &self.scales {
            Nf4Scales::Plain(absmax) => 4 * absmax.dims()[0],
            Nf4Scales::Double(s) => code_bytes * s.codes.dims()[0] + 4 * s.absmax2.dims()[0] + 4,
        };
        code_bytes * len.div_ceil(BLOCK) * BLOCK / 2 + scales
    }
}

impl<B: Kernels> Nf4Weight<B> {
    /// `x · dequantize(W)ᵀ` in `x`'s float type (the weight is dequantized in f32 and cast, as bitsandbytes casts
    /// it to the compute dtype). Under autodiff one node that dequantizes again in backward instead of keeping the
    /// weight ([`Kernels::nf4_linear`]).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::nf4_linear(x, self)
    }
}

/// `x · dequantize(W)ᵀ` in `x`'s float type.
pub(super) fn matmul_transposed<B: Backend, const D: usize>(x: Tensor<B, D>, weight: &Nf4Weight<B>) -> Tensor<B, D> {
    let w = to_dtype(weight.dequantize(), float_dtype(&x));
    burn::tensor::module::linear(x, w.transpose(), None)
}

pub(super) fn autodiff_matmul<I: Kernels, C: CheckpointStrategy, const D: usize>(
    x: Tensor<Autodiff<I, C>, D>,
    weight: Nf4Weight<I>,
) -> Tensor<Autodiff<I, C>, D> {
    let x = x.into_primitive().tensor();
    let ix = float::<I, D>(x.primitive.clone());
    let dtype = float_dtype(&ix);
    let prep = <Nf4MatmulBackward<D> as Backward<I, 1>>::prepare::<C>(Nf4MatmulBackward, [x.node.clone()]);
    let y = match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = I::nf4_linear(ix, &weight);
            prep.finish(Nf4MatmulState { weight, dtype }, primitive(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(primitive(I::nf4_linear(ix, &weight))),
    };
    float(y)
}

/// The node's backward; `D` is x's rank.
#[derive(Debug)]
struct Nf4MatmulBackward<const D: usize>;

/// What the node keeps: the quantized weight (handles to tensors the layer holds anyway) and x's float type.
#[derive(Debug, Clone)]
struct Nf4MatmulState<B: Backend> {
    weight: Nf4Weight<B>,
    dtype: FloatDType,
}

impl<B: Backend, const D: usize> Backward<B, 1> for Nf4MatmulBackward<D> {
    type State = Nf4MatmulState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_out = float::<B, D>(grads.consume::<B>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let w = to_dtype(ops.state.weight.dequantize(), ops.state.dtype);
            let dx = burn::tensor::module::linear(to_dtype(grad_out, ops.state.dtype), w, None);
            grads.register::<B>(node.id, primitive(dx));
        }
    }
}
