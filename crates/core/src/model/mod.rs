//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, TinyLlama, SmolLM), generic over burn's `Backend`.
//!
//! Weights keep Hugging Face's names and layouts field for field (`model.layers.0.self_attn.q_proj.weight` is
//! `layers[0].self_attn.q_proj.weight`), so [`crate::hf`] maps checkpoints without renaming tables.

mod cache;
pub mod classifier;
pub mod compute;
pub mod config;
pub mod fused_loss;
mod layers;
pub mod lora;
pub mod loss;
mod packing;
mod params;
pub mod recompute;
pub mod rope;
pub mod sharded;

pub use crate::kernels::{DoubleQuantScales, Nf4Scales, Nf4Weight};
pub use cache::KvCache;
pub use classifier::SequenceClassifier;
pub use compute::{AttentionKernel, Compute};
pub use config::{Architecture, ModelConfig, RopeConfig, RopeScaling};
pub use layers::{Attention, AttentionContext, DecoderLayer, Linear, LinearWeight, Mlp, RmsNorm, causal_mask};
pub use lora::LoraAdapter;
pub use packing::PositionIds;
pub use params::{ParamMut, ParamRef};
pub use recompute::{DeferredBackward, LayerRecompute};
pub use rope::Rotary;
pub use sharded::LayerSource;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::kernels::Kernels;

/// A decoder-only causal language model.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: ModelConfig,
    #[module(skip)]
    pub rotary: Rotary,
    /// Activation float type and attention kernel; f32 and eager unless a run asks otherwise.
    #[module(skip)]
    pub compute: Compute,
}

impl<B: Backend> LlamaModel<B> {
    /// The decoder layers' linear layers under their module names (`model.layers.0.self_attn.q_proj`), in model
    /// order: what LoRA targets and 4-bit quantization replaces (the head and embeddings stay as they are).
    pub fn decoder_linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        let mut out = Vec::with_capacity(7 * self.layers.len());
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let (attn, mlp) = (&mut layer.self_attn, &mut layer.mlp);
            let named: [(&str, &mut Linear<B>); 7] = [
                ("self_attn.q_proj", &mut attn.q_proj),
                ("self_attn.k_proj", &mut attn.k_proj),
                ("self_attn.v_proj", &mut attn.v_proj),
                ("self_attn.o_proj", &mut attn.o_proj),
                ("mlp.gate_proj", &mut mlp.gate_proj),
                ("mlp.up_proj", &mut mlp.up_proj),
                ("mlp.down_proj", &mut mlp.down_proj),
            ];
            out.extend(named.into_iter().map(|(suffix, linear)| (format!("model.layers.{i}.{suffix}"), linear)));
        }
        out
    }

    /// [`decoder_linears_mut`](Self::decoder_linears_mut), shared.
    pub fn decoder_linears(&self) -> Vec<&Linear<B>> {
        let linears = self.layers.iter().flat_map(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
        });
        linears.collect()
    }

    /// Stores every decoder linear weight in NF4 ([`Linear::quantize_nf4`]), as transformers' bitsandbytes
    /// integration does with `load_in_4bit` (the head and embeddings stay dense).
    pub fn quantize_nf4(&mut self, double_quant: bool) {
        for (_, linear) in self.decoder_linears_mut() {
            linear.quantize_nf4(double_quant);
        }
    }

    /// Whether any decoder weight is stored in 4 bits.
    pub fn is_quantized(&self) -> bool {
        self.decoder_linears().iter().any(|l| matches!(l.weight, LinearWeight::Nf4(_)))
    }
}

impl<B: Backend> LlamaModel<B> {
    /// A randomly initialised model (normal(0, 0.02) weights, zero biases, unit norms), as transformers does. The
    /// weights come from a generator of their own seeded with `seed`, not from burn's process-wide one: the same
    /// seed gives the same model whatever else runs in the process (other ranks, other tests).
    pub fn init(config: &ModelConfig, device: &B::Device, seed: u64) -> Self {
        Self::init_with(config, device, None, seed)
    }

    /// [`init`](Self::init), with `nf4 = Some(double_quant)` storing each decoder linear weight in NF4 as soon as
    /// it is drawn (the same values [`quantize_nf4`](Self::quantize_nf4) gives, never the whole dense model).
    pub fn init_with(config: &ModelConfig, device: &B::Device, nf4: Option<bool>, seed: u64) -> Self {
        let rng = std::cell::RefCell::new(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed));
        let normal = |shape: [usize; 2]| {
            let values = normal_values(&mut rng.borrow_mut(), shape[0] * shape[1], 0.02);
            Tensor::<B, 2>::from_data(TensorData::new(values, shape), device)
        };
        let dense = |out_dim: usize, in_dim: usize, bias: bool| {
            Linear::new(normal([out_dim, in_dim]), bias.then(|| Tensor::zeros([out_dim], device)))
        };
        let linear = |out_dim: usize, in_dim: usize, bias: bool| {
            let mut layer = dense(out_dim, in_dim, bias);
            if let Some(double_quant) = nf4 {
                layer.quantize_nf4(double_quant);
            }
            layer
        };
        let norm = || RmsNorm::new(Tensor::ones([config.hidden_size], device), config.rms_norm_eps);
        let (h, d) = (config.hidden_size, config.head_dim);
        let q_dim = config.num_attention_heads * d;
        let kv_dim = config.num_key_value_heads * d;
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: linear(q_dim, h, config.qkv_bias),
                    k_proj: linear(kv_dim, h, config.qkv_bias),
                    v_proj: linear(kv_dim, h, config.qkv_bias),
                    o_proj: linear(h, q_dim, config.o_bias),
                    num_heads: config.num_attention_heads,
                    num_kv_heads: config.num_key_value_heads,
                    head_dim: d,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: linear(config.intermediate_size, h, config.mlp_bias),
                    up_proj: linear(config.intermediate_size, h, config.mlp_bias),
                    down_proj: linear(h, config.intermediate_size, config.mlp_bias),
                },
            })
            .collect();
        Self {
            embed_tokens: Param::from_tensor(normal([config.vocab_size, h])),
            layers,
            norm: norm(),
            lm_head: (!config.tie_word_embeddings).then(|| dense(config.vocab_size, h, false)),
            config: config.clone(),
            rotary: Rotary::new(&config.rope, d),
            compute: Compute::default(),
        }
    }
}

impl<B: Kernels> LlamaModel<B> {
    /// Training forward over whole sequences: `tokens` `[batch, seq]` → logits `[batch, seq, vocab]`.
    ///
    /// Without `positions` every row is one sequence starting at position 0 under a causal mask. With them
    /// (packed batches), each row may hold several sequences: a sequence starts wherever a position id does not
    /// follow the previous one, RoPE uses the given ids, and attention stays within each sequence.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, positions: Option<&PositionIds>) -> Tensor<B, 3> {
        self.logits(self.hidden_states(tokens, positions))
    }

    /// The final normalised hidden states `[batch, seq, hidden]` (the input of the head).
    pub fn hidden_states(&self, tokens: Tensor<B, 2, Int>, positions: Option<&PositionIds>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let inputs = self.layer_inputs(batch, seq, positions, &tokens.device());
        let ctx = inputs.context();
        let mut x = self.embed(tokens);
        for layer in &self.layers {
            x = layer.forward(x, &ctx, None).0;
        }
        self.norm.forward_fused(x, self.compute.fused_kernels)
    }

    /// The token embeddings `[batch, seq, hidden]` (the first layer's input).
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        // Gathered from the stored table, then cast: only the picked rows are converted.
        compute::to_dtype(burn::tensor::module::embedding(self.embed_tokens.val(), tokens), self.compute.dtype)
    }

    /// What every decoder layer sees besides its input, for a `[batch, seq]` batch: rotary tables and the
    /// attention mask (packed sequences, sliding window). For callers that run the layers one at a time
    /// (gradient checkpointing).
    pub fn layer_inputs(
        &self,
        batch: usize,
        seq: usize,
        positions: Option<&PositionIds>,
        device: &B::Device,
    ) -> LayerInputs<B> {
        let (cos, sin, mask) = match positions {
            Some(p) => {
                assert_eq!((p.batch, p.seq), (batch, seq), "position ids must have the tokens' shape");
                let (cos, sin) = self.rotary.tables(&p.ids, batch, seq, device);
                (cos, sin, p.attention_mask::<B>(self.config.sliding_window, device))
            }
            None => {
                let ids: Vec<u32> = (0..seq as u32).collect();
                let (cos, sin) = self.rotary.tables(&ids, 1, seq, device);
                (cos, sin, packing::window_mask::<B>(seq, seq, self.config.sliding_window, device))
            }
        };
        self.finish_layer_inputs(batch, seq, cos, sin, mask, device)
    }

    /// The final hidden states of right-padded rows as transformers computes them with an attention mask: no
    /// position attends to padding (`real` marks each row's tokens, row-major `[batch, seq]`), and positions
    /// count from 0 in every row. Real tokens get what [`LlamaModel::hidden_states`] gives them; only the padding
    /// positions' own outputs differ.
    pub fn hidden_states_padded(&self, tokens: Tensor<B, 2, Int>, real: &[bool]) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let ids: Vec<u32> = (0..seq as u32).collect();
        let (cos, sin) = self.rotary.tables(&ids, 1, seq, &device);
        let window = self.config.sliding_window;
        let mut blocked = Vec::with_capacity(batch * seq * seq);
        for row in real.chunks(seq) {
            for i in 0..seq {
                for (j, &present) in row.iter().enumerate() {
                    blocked.push(j > i || !present || window.is_some_and(|w| i >= j + w));
                }
            }
        }
        let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(blocked, [batch, 1, seq, seq]), &device);
        let inputs = self.finish_layer_inputs(batch, seq, cos, sin, Some(mask), &device);
        let ctx = inputs.context();
        let mut x = self.embed(tokens);
        for layer in &self.layers {
            x = layer.forward(x, &ctx, None).0;
        }
        self.norm.forward_fused(x, self.compute.fused_kernels)
    }

    fn finish_layer_inputs(
        &self,
        batch: usize,
        seq: usize,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        mask: Option<Tensor<B, 4, Bool>>,
        device: &B::Device,
    ) -> LayerInputs<B> {
        // Eager attention under autodiff masks every head's scores, and a broadcast mask is copied out each time
        // it is used (every layer, forward and backward, on the CPU backend): expand it once here instead.
        let mask = if B::ad_enabled(device) && self.compute.attention == AttentionKernel::Eager {
            let mask = mask.unwrap_or_else(|| causal_mask::<B>(seq, seq, device));
            let rows = mask.dims()[0];
            Some(mask.repeat_dim(0, batch / rows).repeat_dim(1, self.config.num_attention_heads))
        } else {
            mask
        };
        let dtype = self.compute.dtype;
        let (cos, sin) = (compute::to_dtype(cos, dtype), compute::to_dtype(sin, dtype));
        LayerInputs { cos, sin, mask, kernel: self.compute.attention, fused_kernels: self.compute.fused_kernels }
    }

    /// Applies the (possibly tied) head to hidden states, in their float type.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let table = compute::to_dtype(self.embed_tokens.val(), compute::float_dtype(&hidden));
                burn::tensor::module::linear(hidden, table.transpose(), None)
            }
        }
    }

    /// Incremental forward for generation: runs `tokens` `[batch, new]` after what `cache` already holds and
    /// appends their keys and values to it. Returns logits for the new tokens only.
    pub fn forward_cached(&self, tokens: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let hidden = self.decode_cached(tokens, cache, &[]);
        self.logits(hidden)
    }

    /// [`LlamaModel::forward_cached`] for left-padded rows: row `b`'s first `left_pad[b]` positions (counted from
    /// the start of the cache) are padding that no position of the row attends to, and its positions count from
    /// its first real token (transformers' `cumsum(attention_mask) - 1`), so a padded row decodes as it would
    /// alone. Returns the logits of the last new position only, `[batch, vocab]`: all a sampler needs.
    pub fn forward_cached_padded(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        left_pad: &[usize],
    ) -> Tensor<B, 2> {
        let [batch, seq] = tokens.dims();
        let hidden = self.decode_cached(tokens, cache, left_pad);
        let last = hidden.slice([0..batch, seq - 1..seq]);
        let logits = self.logits(last);
        let vocab = logits.dims()[2];
        logits.reshape([batch, vocab])
    }

    /// The final hidden states (normed) of `tokens` run after `cache`, which takes their keys and values.
    fn decode_cached(&self, tokens: Tensor<B, 2, Int>, cache: &mut KvCache<B>, left_pad: &[usize]) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let past = cache.len();
        let padded = left_pad.iter().any(|&p| p > 0);
        let (cos, sin) = if padded {
            let ids: Vec<u32> = (0..batch)
                .flat_map(|b| {
                    (past..past + seq).map(move |i| i.saturating_sub(left_pad.get(b).copied().unwrap_or(0)) as u32)
                })
                .collect();
            self.rotary.tables(&ids, batch, seq, &device)
        } else {
            let ids: Vec<u32> = (past as u32..(past + seq) as u32).collect();
            self.rotary.tables(&ids, 1, seq, &device)
        };
        let (cos, sin) = (compute::to_dtype(cos, self.compute.dtype), compute::to_dtype(sin, self.compute.dtype));
        let window = self.config.sliding_window;
        let mask = if padded {
            Some(packing::padded_cache_mask::<B>(left_pad, batch, seq, past, window, &device))
        } else {
            packing::window_mask::<B>(seq, past + seq, window, &device)
        };
        let ctx = AttentionContext {
            cos: &cos,
            sin: &sin,
            mask: mask.as_ref(),
            kernel: self.compute.attention,
            fused_kernels: self.compute.fused_kernels,
        };
        let mut x = self.embed(tokens);
        for (index, layer) in self.layers.iter().enumerate() {
            let (out, kv) = layer.forward(x, &ctx, cache.take(index));
            cache.put(index, kv);
            x = out;
        }
        cache.advance(seq);
        self.norm.forward(x)
    }

    /// An empty cache sized for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }
}

/// Rotary tables and attention mask shared by the decoder layers of one batch (see [`LlamaModel::layer_inputs`]).
pub struct LayerInputs<B: Backend> {
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
    pub mask: Option<Tensor<B, 4, Bool>>,
    pub kernel: AttentionKernel,
    pub fused_kernels: bool,
}

impl<B: Backend> LayerInputs<B> {
    pub fn context(&self) -> AttentionContext<'_, B> {
        AttentionContext {
            cos: &self.cos,
            sin: &self.sin,
            mask: self.mask.as_ref(),
            kernel: self.kernel,
            fused_kernels: self.fused_kernels,
        }
    }
}

/// Turns host token ids into a `[batch, seq]` tensor.
pub fn tokens_tensor<B: Backend>(ids: &[u32], batch: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [batch, ids.len() / batch.max(1)]), device)
}

/// `n` draws from normal(0, `std`) (Box-Muller over the generator's uniform draws).
fn normal_values(rng: &mut impl rand::Rng, n: usize, std: f64) -> Vec<f32> {
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        // 1 - u keeps the logarithm's argument in (0, 1].
        let (u1, u2) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
        let radius = std * (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(n);
    values
}
