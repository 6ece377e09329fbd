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
            // Saturated when 8 · hidden overflows: `validate` refuses the shape by its parameter count.
            intermediate_size: hidden_size.checked_mul(8).map_or(usize::MAX, |h8| (h8 / 3).div_ceil(16) * 16),
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            // 0 heads leaves head_dim 0 for `validate` to refuse.
            head_dim: hidden_size.checked_div(heads).unwrap_or(0),
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
        // Every size product below the total fits once the total does (the sizes are at least 1).
        if self.checked_num_parameters().is_none() {
            return Err("the shape's parameter count does not fit in 64 bits".to_string());
        }
        Ok(())
    }

    /// Number of parameters, counting a tied head once. The shape must have passed [`Self::validate`].
    pub fn num_parameters(&self) -> usize {
        self.checked_num_parameters().unwrap_or(usize::MAX)
    }

    /// [`Self::num_parameters`], `None` when it overflows.
    fn checked_num_parameters(&self) -> Option<usize> {
        let (h, ffn, vocab) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads.checked_mul(self.head_dim)?;
        let kv = self.num_key_value_heads.checked_mul(self.head_dim)?;
        let sum = |terms: &[Option<usize>]| terms.iter().try_fold(0usize, |acc, t| acc.checked_add((*t)?));
        let bias = |on: bool, n: Option<usize>| if on { n } else { Some(0) };
        let attn = sum(&[
            h.checked_mul(q),
            h.checked_mul(kv)?.checked_mul(2),
            q.checked_mul(h),
            bias(self.qkv_bias, kv.checked_mul(2).and_then(|kv2| kv2.checked_add(q))),
            bias(self.o_bias, Some(h)),
        ])?;
        let mlp = sum(&[
            h.checked_mul(ffn)?.checked_mul(3),
            bias(self.mlp_bias, ffn.checked_mul(2).and_then(|f| f.checked_add(h))),
        ])?;
        let layer = sum(&[Some(attn), Some(mlp), h.checked_mul(2)])?;
        let head = if self.tie_word_embeddings { Some(0) } else { vocab.checked_mul(h) };
        sum(&[vocab.checked_mul(h), self.num_hidden_layers.checked_mul(layer), Some(h), head])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_whose_parameter_count_overflows_is_refused() {
        // Found by `cargo xtask fuzz --target config-json`: num_hidden_layers = 2^63 - 1 overflowed the count.
        let mut config = ModelConfig::tiny_llama(300, 16, 1, 2, 1);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.num_parameters(), 2 * 300 * 16 + 16 + (16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 48 + 32));
        config.num_hidden_layers = i64::MAX as usize;
        assert_eq!(config.validate(), Err("the shape's parameter count does not fit in 64 bits".to_string()));
        let config = ModelConfig { num_attention_heads: usize::MAX / 2, num_key_value_heads: 1, ..config };
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_from_scratch_hidden_size_near_2_pow_63_is_an_error_not_an_overflow() {
        // Found by `cargo xtask fuzz --target run-config`: `[model] hidden_size = 9223372036854775807` overflowed
        // the default intermediate size (8 · hidden / 3) in `RunConfig::scratch_model`; 2^62 keeps head_dim even.
        let config = ModelConfig::tiny_llama(2, 1 << 62, 9, 4, 2);
        assert_eq!(config.validate(), Err("the shape's parameter count does not fit in 64 bits".to_string()));
    }

    #[test]
    fn no_heads_is_an_error_not_a_division_by_zero() {
        // `[model] num_attention_heads = 0` divided by zero in `RunConfig::scratch_model` (seen while writing the
        // run-config fuzz target, which builds that shape).
        let config = ModelConfig::tiny_llama(300, 16, 1, 0, 0);
        assert_eq!(config.validate(), Err("`num_attention_heads` must be greater than 0".to_string()));
    }
}
