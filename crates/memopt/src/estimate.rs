//! Memory per device before a run starts: model states by DeepSpeed's ZeRO accounting (weights, gradients,
//! optimizer state, each sharded over the data-parallel ranks by the stage), plus activations for a given
//! batch shape.

use llmtrain_core::model::ModelConfig;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every parameter.
    Full,
    /// A low-rank adapter on every linear layer; the base is frozen (no gradients, no optimizer state).
    Lora,
    /// LoRA over a base stored in NF4 with double quantization.
    Qlora,
}

/// How weights, gradients and optimizer state are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 everything: 4 + 4 bytes, Adam's m and v 8 bytes per parameter.
    Fp32,
    /// fp16/bf16 compute copy and gradients (2 + 2 bytes) with an f32 master copy, m and v (K = 12), as ZeRO's paper
    /// counts mixed precision.
    Mixed,
    /// bf16 weights, gradients and Adam state, no f32 master (Lightning's "bf16-true"): 2 + 2 + 4 bytes.
    Bf16,
}

/// Bytes per parameter of (compute weights, gradients, optimizer state).
fn bytes_per_param(precision: Precision) -> (f64, f64, f64) {
    match precision {
        Precision::Fp32 => (4.0, 4.0, 8.0),
        Precision::Mixed => (2.0, 2.0, 12.0),
        Precision::Bf16 => (2.0, 2.0, 4.0),
    }
}

/// NF4 with double quantization: 4 bits per weight, one 8-bit absmax per 64 weights, one f32 scale per 256
/// absmax values (4 + 8/64 + 32/(64·256) ≈ 4.127 bits).
pub const NF4_DOUBLE_QUANT_BITS: f64 = 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0);

/// The batch whose activations are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub batch: usize,
    pub seq: usize,
}

/// Everything the estimate depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateInput {
    /// Parameters of the model.
    pub params: u64,
    /// The model's shape, when known (needed for LoRA's adapter size and for activations).
    pub model: Option<ModelConfig>,
    pub method: Method,
    /// LoRA rank (adapters on q, k, v, o, gate, up, down of every layer).
    pub lora_rank: usize,
    pub precision: Precision,
    /// ZeRO stage 0 (plain data parallel) to 3.
    pub zero_stage: u8,
    /// Data-parallel ranks the states are sharded over.
    pub gpus: usize,
    pub batch: Option<BatchShape>,
    pub gradient_checkpointing: bool,
}

/// Bytes per device, by kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    /// None when no batch shape (or no model shape) was given.
    pub activations: Option<f64>,
}

impl MemoryEstimate {
    pub fn total(&self) -> f64 {
        self.weights + self.gradients + self.optimizer + self.activations.unwrap_or(0.0)
    }

    /// Model states only (what ZeRO's formulas give).
    pub fn model_states(&self) -> f64 {
        self.weights + self.gradients + self.optimizer
    }
}

/// Why an estimate cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EstimateError {
    #[error("--zero-stage must be 0, 1, 2 or 3, got {0}")]
    ZeroStage(u8),
    #[error("--gpus must be at least 1")]
    NoGpus,
    #[error("{0} needs the model's shape: give --model DIR instead of --params")]
    NeedsShape(&'static str),
}

/// Parameters of a Llama-family model of this shape (tied heads counted once).
pub fn count_params(m: &ModelConfig) -> u64 {
    let (h, i, v) = (m.hidden_size as u64, m.intermediate_size as u64, m.vocab_size as u64);
    let q = (m.num_attention_heads * m.head_dim) as u64;
    let kv = (m.num_key_value_heads * m.head_dim) as u64;
    let attention = h * q + 2 * h * kv + q * h + if m.qkv_bias { q + 2 * kv } else { 0 } + if m.o_bias { h } else { 0 };
    let mlp = 3 * h * i + if m.mlp_bias { 2 * i + h } else { 0 };
    let layer = attention + mlp + 2 * h;
    let head = if m.tie_word_embeddings { 0 } else { v * h };
    v * h + m.num_hidden_layers as u64 * layer + h + head
}

/// Adapter parameters of rank `r` on every linear layer of every decoder layer (A: r × in, B: out × r).
pub fn lora_params(m: &ModelConfig, r: usize) -> u64 {
    let (h, i, r) = (m.hidden_size as u64, m.intermediate_size as u64, r as u64);
    let q = (m.num_attention_heads * m.head_dim) as u64;
    let kv = (m.num_key_value_heads * m.head_dim) as u64;
    let per_layer = r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h));
    m.num_hidden_layers as u64 * per_layer
}

/// Activation bytes kept for backward, per device. Counts the tensors a Llama layer saves in the compute
/// precision (Korthikanti et al.'s accounting without tensor parallelism, adapted to SwiGLU and grouped KV
/// heads): per token and layer, the norms' inputs and outputs, q, k, v, the attention output, the scores and
/// probabilities (heads × seq each), and the MLP's gate, up, activation and product; plus the logits and their
/// log-softmax. With checkpointing only each layer's input is kept, plus one layer's worth for the recompute.
pub fn activation_bytes(m: &ModelConfig, shape: BatchShape, element_bytes: f64, checkpointing: bool) -> f64 {
    let tokens = (shape.batch * shape.seq) as f64;
    let h = m.hidden_size as f64;
    let q = (m.num_attention_heads * m.head_dim) as f64;
    let kv = (m.num_key_value_heads * m.head_dim) as f64;
    let i = m.intermediate_size as f64;
    let scores = 2.0 * m.num_attention_heads as f64 * shape.seq as f64;
    let per_token_layer = 4.0 * h + q + 2.0 * kv + q + h + scores + 4.0 * i;
    let layers = m.num_hidden_layers as f64;
    let head = 2.0 * m.vocab_size as f64 + h;
    let kept_layers = if checkpointing { layers * h + per_token_layer } else { layers * per_token_layer };
    tokens * (kept_layers + head) * element_bytes
}

/// The estimate per device.
pub fn estimate(input: &EstimateInput) -> Result<MemoryEstimate, EstimateError> {
    if input.zero_stage > 3 {
        return Err(EstimateError::ZeroStage(input.zero_stage));
    }
    if input.gpus == 0 {
        return Err(EstimateError::NoGpus);
    }
    let (w, g, o) = bytes_per_param(input.precision);
    let psi = input.params as f64;
    let shards = input.gpus as f64;
    let shard = |stage_shards_it: bool, bytes: f64| if stage_shards_it { bytes / shards } else { bytes };
    let stage = input.zero_stage;
    let (weights, trainable) = match input.method {
        Method::Full => (psi * w, psi),
        Method::Lora | Method::Qlora => {
            let model = input.model.as_ref().ok_or(EstimateError::NeedsShape("--method lora/qlora"))?;
            let adapter = lora_params(model, input.lora_rank) as f64;
            let base = if input.method == Method::Qlora { psi * NF4_DOUBLE_QUANT_BITS / 8.0 } else { psi * w };
            (base + adapter * w, adapter)
        }
    };
    let activations = match (input.batch, &input.model) {
        (Some(shape), Some(model)) => Some(activation_bytes(model, shape, w, input.gradient_checkpointing)),
        (Some(_), None) => return Err(EstimateError::NeedsShape("activations (--batch/--seq)")),
        (None, _) => None,
    };
    Ok(MemoryEstimate {
        weights: shard(stage >= 3, weights),
        gradients: shard(stage >= 2, trainable * g),
        optimizer: shard(stage >= 1, trainable * o),
        activations,
    })
}

/// Parses a parameter count such as `7B`, `7.5B`, `350M`, `125k` or `1234`.
pub fn parse_param_count(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last()? {
        (at, 'B' | 'b') => (&text[..at], 1e9),
        (at, 'M' | 'm') => (&text[..at], 1e6),
        (at, 'K' | 'k') => (&text[..at], 1e3),
        _ => (text, 1.0),
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value > 0.0).then(|| (value * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero(stage: u8) -> EstimateInput {
        EstimateInput {
            params: 7_500_000_000,
            model: None,
            method: Method::Full,
            lora_rank: 16,
            precision: Precision::Mixed,
            zero_stage: stage,
            gpus: 64,
            batch: None,
            gradient_checkpointing: false,
        }
    }

    #[test]
    fn zero_paper_figures_for_7_5b_on_64_gpus() {
        // ZeRO paper, Figure 1: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device.
        let gb: Vec<f64> = (0..=3).map(|s| estimate(&zero(s)).unwrap().model_states() / 1e9).collect();
        let rounded: Vec<f64> = gb.iter().map(|g| (g * 10.0).round() / 10.0).collect();
        assert_eq!(rounded, vec![120.0, 31.4, 16.6, 1.9]);
    }

    #[test]
    fn parameter_counts_match_the_shapes() {
        // TinyLlama-1.1B's published shape and count: 1,100,048,384 parameters.
        let mut m = ModelConfig::tiny_llama(32000, 2048, 22, 32, 4);
        m.intermediate_size = 5632;
        m.tie_word_embeddings = false;
        assert_eq!(count_params(&m), 1_100_048_384);
        // Llama-2-7B: 6,738,415,616.
        let mut m = ModelConfig::tiny_llama(32000, 4096, 32, 32, 32);
        m.intermediate_size = 11008;
        m.tie_word_embeddings = false;
        assert_eq!(count_params(&m), 6_738_415_616);
    }

    #[test]
    fn lora_and_qlora_keep_states_only_for_the_adapter() {
        let mut m = ModelConfig::tiny_llama(32000, 4096, 32, 32, 32);
        m.intermediate_size = 11008;
        m.tie_word_embeddings = false;
        let params = count_params(&m);
        let input =
            EstimateInput { params, model: Some(m.clone()), method: Method::Lora, gpus: 1, zero_stage: 0, ..zero(0) };
        let lora = estimate(&input).unwrap();
        let adapter = lora_params(&m, 16) as f64;
        // Llama-2-7B with r = 16 on all linear layers: 39,976,960 adapter parameters (PEFT's count).
        assert_eq!(adapter, 39_976_960.0);
        assert_eq!(lora.gradients, adapter * 2.0);
        assert_eq!(lora.optimizer, adapter * 12.0);
        let qlora = estimate(&EstimateInput { method: Method::Qlora, ..input }).unwrap();
        let base_bits = (qlora.weights - adapter * 2.0) * 8.0 / params as f64;
        assert!((base_bits - 4.127).abs() < 0.001, "{base_bits}");
    }

    #[test]
    fn checkpointing_keeps_fewer_activations() {
        let m = ModelConfig::tiny_llama(4096, 256, 4, 8, 4);
        let shape = BatchShape { batch: 8, seq: 256 };
        let plain = activation_bytes(&m, shape, 4.0, false);
        let ckpt = activation_bytes(&m, shape, 4.0, true);
        assert!(ckpt < plain * 0.6, "{ckpt} vs {plain}");
    }

    #[test]
    fn bad_inputs_are_named() {
        assert_eq!(estimate(&zero(4)), Err(EstimateError::ZeroStage(4)));
        assert_eq!(estimate(&EstimateInput { gpus: 0, ..zero(0) }), Err(EstimateError::NoGpus));
        assert!(matches!(
            estimate(&EstimateInput { method: Method::Lora, ..zero(0) }),
            Err(EstimateError::NeedsShape(_))
        ));
        assert_eq!(parse_param_count("7.5B"), Some(7_500_000_000));
        assert_eq!(parse_param_count("350M"), Some(350_000_000));
        assert_eq!(parse_param_count("12"), Some(12));
        assert_eq!(parse_param_count("seven"), None);
        assert_eq!(parse_param_count("-1B"), None);
    }
}
