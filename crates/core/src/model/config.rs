//! The shape of a Llama-family decoder, independent of any file format.

use serde::{Deserialize, Serialize};

/// Which Hugging Face architecture a model follows. They share one decoder; they differ in biases and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 2/3, TinyLlama, SmolLM (`model_type: "llama"`).
    Llama,
    /// Mistral (`model_type: "mistral"`).
    Mistral,
    /// Qwen2 / Qwen2.5 (`model_type: "qwen2"`): q/k/v projections carry a bias.
    Qwen2,
}

impl Architecture {
    /// The `model_type` value in config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// The `architectures[0]` value in config.json.
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// transformers' sequence-classification class (a reward model's).
    pub fn sequence_classification_class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForSequenceClassification",
            Architecture::Mistral => "MistralForSequenceClassification",
            Architecture::Qwen2 => "Qwen2ForSequenceClassification",
        }
    }
}

/// How rotary position embeddings scale their frequencies (transformers' `rope_type`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

/// Rotary embedding parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// Base of the geometric frequency progression (`rope_theta`).
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// The full shape and numerics of a decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// Mistral-style sliding-window attention: a query sees at most this many keys (itself included).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// A small Llama shape for tests and from-scratch pretraining.
    pub fn tiny_llama(vocab_size: usize, hidden_size: usize, layers: usize, heads: usize, kv_heads: usize) -> Self {
        Self {
            architecture: Architecture::Llama,
            vocab_size,
            hidden_size,
            intermediate_size: (hidden_size * 8 / 3).div_ceil(16) * 16,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: hidden_size / heads,
            rms_norm_eps: 1e-5,
            rope: RopeConfig { theta: 10_000.0, scaling: RopeScaling::Default },
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
        }
    }

    /// Checks the relations between sizes that the decoder relies on.
    pub fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (key, value) in nonzero {
            if value == 0 {
                return Err(format!("`{key}` must be greater than 0"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("`head_dim` ({}) must be even for rotary embeddings", self.head_dim));
        }
        Ok(())
    }

    /// Number of parameters, counting a tied head once.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let bias = |on: bool, n: usize| if on { n } else { 0 };
        let attn = h * q + 2 * h * kv + q * h + bias(self.qkv_bias, q + 2 * kv) + bias(self.o_bias, h);
        let mlp = 3 * h * self.intermediate_size + bias(self.mlp_bias, 2 * self.intermediate_size + h);
        let layer = attn + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }
}
