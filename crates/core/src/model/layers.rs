//! The decoder's building blocks: linear, RMSNorm, attention, SwiGLU MLP and the decoder layer.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, FloatDType, Tensor};

use super::compute::{AttentionKernel, float_dtype, to_dtype};
use super::lora::LoraAdapter;
use super::rope::apply_rotary;
use crate::kernels::flash_attention::{flash_attention, repeat_kv};
use crate::kernels::{Kernels, Nf4Weight, fused_ops};

/// A linear layer with its weight kept in Hugging Face's `[out, in]` layout, so checkpoints map one to one.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: LinearWeight<B>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// A LoRA/DoRA adapter (llmtrain-fastlora attaches them).
    pub adapter: Option<LoraAdapter<B>>,
}

/// A linear layer's weight: a parameter, or a frozen 4-bit constant (QLoRA's base).
#[derive(Module, Debug)]
pub enum LinearWeight<B: Backend> {
    Dense(Param<Tensor<B, 2>>),
    Nf4(Nf4Weight<B>),
}

impl<B: Backend> Linear<B> {
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: LinearWeight::Dense(Param::from_tensor(weight)),
            bias: bias.map(Param::from_tensor),
            adapter: None,
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match &self.weight {
            LinearWeight::Dense(w) => w.val().dims(),
            LinearWeight::Nf4(w) => w.dims(),
        }
    }

    /// The weight parameter, unless the weight is quantized (a constant, not a parameter).
    pub fn dense_weight(&self) -> Option<&Param<Tensor<B, 2>>> {
        match &self.weight {
            LinearWeight::Dense(w) => Some(w),
            LinearWeight::Nf4(_) => None,
        }
    }

    /// The weight's value `[out, in]` in f32 (dequantized when stored in 4 bits).
    pub fn weight_value(&self) -> Tensor<B, 2> {
        match &self.weight {
            LinearWeight::Dense(w) => w.val(),
            LinearWeight::Nf4(w) => w.dequantize(),
        }
    }

    /// Replaces a dense weight by its NF4 quantization (bitsandbytes' `quantize_4bit`, blocks of 64, with or
    /// without double quantization); the bias stays as it is. A quantized weight stays unchanged.
    pub fn quantize_nf4(&mut self, double_quant: bool) {
        let LinearWeight::Dense(w) = &self.weight else { return };
        let value = w.val();
        let (shape, device) = (value.dims(), value.device());
        let values: Vec<f32> = value.into_data().convert::<f32>().into_vec().expect("f32 after convert");
        let quantized = crate::nf4::Nf4Tensor::quantize(&values, double_quant);
        self.weight = LinearWeight::Nf4(Nf4Weight::new(quantized, shape, &device));
    }
}

impl<B: Kernels> Linear<B> {
    /// Computes in `x`'s float type: the weight is cast to it (mixed precision keeps f32 master weights; a 4-bit
    /// weight is dequantized to it).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = float_dtype(&x);
        let bias = self.bias.as_ref().map(|b| to_dtype(b.val(), dtype));
        let base = match &self.weight {
            LinearWeight::Dense(w) => {
                let weight = to_dtype(w.val(), dtype).transpose();
                burn::tensor::module::linear(x.clone(), weight, bias.clone())
            }
            LinearWeight::Nf4(w) => match &bias {
                Some(b) => w.forward(x.clone()) + b.clone().unsqueeze(),
                None => w.forward(x.clone()),
            },
        };
        let Some(adapter) = &self.adapter else {
            return base;
        };
        // DoRA reads the base weight (in x's float type); plain LoRA never does.
        adapter.apply(x, base, || to_dtype(self.weight_value(), dtype), bias)
    }
}

/// Root-mean-square normalisation: `x / sqrt(mean(x²) + eps) · weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self { weight: Param::from_tensor(weight), eps }
    }
}

impl<B: Kernels> RmsNorm<B> {
    /// [`forward`](Self::forward), or with `fused` the same result as one autodiff node that keeps only its inputs
    /// and the inverse RMS ([`fused_ops::rms_norm`]).
    pub fn forward_fused<const D: usize>(&self, x: Tensor<B, D>, fused: bool) -> Tensor<B, D> {
        if fused { fused_ops::rms_norm(x, self.weight.val(), self.eps) } else { self.forward(x) }
    }

    /// In 16-bit compute the statistics and the normalisation run in f32, as transformers' LlamaRMSNorm does, and
    /// the result is cast back before the weight multiplies it.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = float_dtype(&x);
        let x32 = to_dtype(x, FloatDType::F32);
        let mean_square = x32.clone().powi_scalar(2).mean_dim(D - 1);
        let inv_rms = mean_square.add_scalar(self.eps).sqrt().recip();
        if dtype == FloatDType::F32 {
            return x32 * inv_rms * self.weight.val().unsqueeze();
        }
        to_dtype(x32 * inv_rms, dtype) * to_dtype(self.weight.val(), dtype).unsqueeze()
    }
}

/// Grouped-query self-attention (multi-head when kv heads = heads, multi-query when kv heads = 1).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub num_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
}

/// What one attention call sees besides its input.
pub struct AttentionContext<'a, B: Backend> {
    pub cos: &'a Tensor<B, 4>,
    pub sin: &'a Tensor<B, 4>,
    /// `true` where a query may not see a key, `[batch, 1, q, k]`; `None` means plain causal.
    pub mask: Option<&'a Tensor<B, 4, Bool>>,
    pub kernel: AttentionKernel,
    /// The decoder layer's RMSNorms and SwiGLU run as fused autodiff nodes ([`super::fused_ops`]).
    pub fused_kernels: bool,
}

impl<B: Kernels> Attention<B> {
    /// `x` is `[batch, seq, hidden]`; `past` holds earlier keys and values `[batch, kv_heads, past, head_dim]`
    /// (after RoPE). Returns the output and the keys/values including this call's.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &AttentionContext<'_, B>,
        past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let [batch, seq, _] = x.dims();
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([batch, seq, heads, self.head_dim]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()), self.num_heads);
        let k = split(self.k_proj.forward(x.clone()), self.num_kv_heads);
        let v = split(self.v_proj.forward(x), self.num_kv_heads);
        // The fused node keeps no copy of q or k for backward (it only needs the tables).
        let rotate = if ctx.fused_kernels { fused_ops::rope } else { apply_rotary };
        let q = rotate(q, ctx.cos, ctx.sin);
        let k = rotate(k, ctx.cos, ctx.sin);
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        let out = match ctx.kernel {
            // Without autodiff burn's own fused attention is already memory-efficient (Flex tiles long sequences,
            // CubeCL backends run their flash kernel); training needs ours, which has a backward. It reads grouped
            // key/value heads as they are.
            AttentionKernel::Flash { block } if B::ad_enabled(&q.device()) => {
                let scale = 1.0 / (self.head_dim as f64).sqrt();
                flash_attention(q, k.clone(), v.clone(), ctx.mask, scale, block)
            }
            _ => scaled_dot_product(q, repeat_kv(&k, self.num_heads), repeat_kv(&v, self.num_heads), ctx.mask),
        };
        let out = out.swap_dims(1, 2).reshape([batch, seq, self.num_heads * self.head_dim]);
        (self.o_proj.forward(out), (k, v))
    }
}

/// softmax(q kᵀ / sqrt(d) + mask) v, causal (bottom-right aligned) unless an explicit mask is given.
fn scaled_dot_product<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let [batch, heads, q_len, head_dim] = q.dims();
    let k_len = k.dims()[2];
    let scale = 1.0 / (head_dim as f64).sqrt();
    if B::ad_enabled(&q.device()) {
        // Under autodiff burn decomposes attention anyway; doing it here keeps one code path for the mask.
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        let full = [batch, heads, q_len, k_len];
        let blocked = match mask {
            // Already one mask per head (expanded once per forward by `LlamaModel::layer_inputs`).
            Some(m) if m.dims() == full => m.clone(),
            Some(m) => m.clone().expand(full),
            None => causal_mask::<B>(q_len, k_len, &scores.device()).expand(full),
        };
        // Softmax in f32 under 16-bit compute, as transformers' eager attention does.
        let dtype = float_dtype(&v);
        let scores = to_dtype(scores, FloatDType::F32).mask_fill(blocked, f32::NEG_INFINITY);
        return to_dtype(softmax(scores, 3), dtype).matmul(v);
    }
    let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: mask.is_none() };
    let mask = mask.map(|m| m.clone().expand([batch, heads, q_len, k_len]));
    burn::tensor::module::attention(q, k, v, mask, None, options)
}

/// `true` above the diagonal, aligned so the last query sees every key: `[1, 1, q_len, k_len]`.
pub fn causal_mask<B: Backend>(q_len: usize, k_len: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    // burn's tril_mask marks what lies outside the lower triangle (j > i + offset): exactly the future.
    let offset = k_len as i64 - q_len as i64;
    Tensor::<B, 2, Bool>::tril_mask([q_len, k_len], offset, device).unsqueeze()
}

/// SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Kernels> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_fused(x, false)
    }

    /// With `fused`, `silu(gate) · up` is one autodiff node that keeps only gate and up and recomputes the sigmoid
    /// in backward ([`fused_ops::swiglu`]).
    pub fn forward_fused(&self, x: Tensor<B, 3>, fused: bool) -> Tensor<B, 3> {
        let (gate, up) = (self.gate_proj.forward(x.clone()), self.up_proj.forward(x));
        let hidden = if fused { fused_ops::swiglu(gate, up) } else { silu(gate) * up };
        self.down_proj.forward(hidden)
    }
}

/// One pre-norm decoder layer: attention and MLP, each with a residual connection.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Kernels> DecoderLayer<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &AttentionContext<'_, B>,
        past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let fused = ctx.fused_kernels;
        let (attn, kv) = self.self_attn.forward(self.input_layernorm.forward_fused(x.clone(), fused), ctx, past);
        let x = x + attn;
        let x = x.clone() + self.mlp.forward_fused(self.post_attention_layernorm.forward_fused(x, fused), fused);
        (x, kv)
    }
}
