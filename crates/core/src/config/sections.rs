//! The sections of the run config that llmtrain-core owns: where the model, tokenizer and data come from,
//! optimisation and bookkeeping, the output directory, and 4-bit storage of the base weights.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::LossOn;
use crate::model::Architecture;
use crate::train::{ScheduleKind, WarmupType};

/// How the base model's weights are stored, as transformers' `BitsAndBytesConfig` names it. The compute precision
/// is `[memopt] mixed_precision` (bitsandbytes' `bnb_4bit_compute_dtype`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantizationSection {
    /// Every decoder linear weight stored in 4 bits as the checkpoint loads (head and embeddings stay dense).
    pub load_in_4bit: bool,
    /// Only `"nf4"` (QLoRA's NormalFloat); bitsandbytes' `"fp4"` is not supported.
    pub bnb_4bit_quant_type: String,
    /// Double quantization of the block maxima (8-bit codes in blocks of 256): ~4.127 instead of 4.5 bits a weight.
    pub bnb_4bit_use_double_quant: bool,
}

impl Default for QuantizationSection {
    fn default() -> Self {
        Self { load_in_4bit: false, bnb_4bit_quant_type: "nf4".into(), bnb_4bit_use_double_quant: true }
    }
}

impl QuantizationSection {
    /// The 4-bit storage to load the base in, if any: `Some(double_quant)`.
    pub fn nf4(&self) -> Option<bool> {
        self.load_in_4bit.then_some(self.bnb_4bit_use_double_quant)
    }
}

/// Where the model comes from: an HF checkpoint directory (`path`), or a from-scratch shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub path: Option<PathBuf>,
    pub architecture: Option<Architecture>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rope_theta: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub rms_norm_eps: Option<f64>,
}

/// Where the tokenizer comes from: a directory (`path`), BPE training on `train_files`, or the model directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub train_files: Vec<PathBuf>,
    pub vocab_size: Option<usize>,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
}

impl Default for TokenizerSection {
    fn default() -> Self {
        Self { path: None, train_files: Vec::new(), vocab_size: None, min_frequency: default_min_frequency() }
    }
}

/// The dataset and how it is cut into batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSONL, Parquet or plain-text files; a directory stands for the files in it.
    pub files: Vec<PathBuf>,
    pub seq_len: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    #[serde(default = "yes")]
    pub packing: bool,
    #[serde(default = "yes")]
    pub shuffle: bool,
    #[serde(default = "default_loss_on")]
    pub loss_on: LossOn,
    #[serde(default)]
    pub skip_malformed: bool,
    /// Share of sequences held out for evaluation.
    #[serde(default)]
    pub eval_fraction: f64,
}

/// Optimisation and bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    pub max_steps: u64,
    pub learning_rate: f64,
    pub lr_schedule: ScheduleKind,
    pub warmup_steps: u64,
    /// `linear` (transformers) or `log` (DeepSpeed WarmupLR's default).
    pub warmup_type: WarmupType,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub gradient_accumulation_steps: usize,
    /// Global grad-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    pub seed: u64,
    pub logging_steps: u64,
    /// Evaluate every N steps (0 = only at the end).
    pub eval_steps: u64,
    /// At most this many eval batches per evaluation.
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = only at the end).
    pub save_steps: u64,
    /// Keep this many most recent checkpoints.
    pub save_total_limit: usize,
    /// Text to continue with the trained model at the end of the run.
    pub sample_prompt: Option<String>,
    pub sample_max_new_tokens: usize,
    /// Held-out prompt/completion rows (JSONL or Parquet): exact-match accuracy of greedy completions is
    /// measured before training and at the end.
    pub accuracy_file: Option<PathBuf>,
    /// At most this many rows of `accuracy_file`.
    pub accuracy_samples: usize,
    /// A DeepSpeed config (`ds_config.json`) whose settings the run takes (transformers' `deepspeed` argument):
    /// read by llmtrain-zero, as `[zero]` and the training settings it names.
    pub deepspeed: Option<PathBuf>,
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            max_steps: 100,
            learning_rate: 3e-4,
            lr_schedule: ScheduleKind::Cosine,
            warmup_type: WarmupType::Linear,
            warmup_steps: 0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            gradient_accumulation_steps: 1,
            max_grad_norm: 1.0,
            seed: 42,
            logging_steps: 10,
            eval_steps: 0,
            eval_batches: 20,
            save_steps: 0,
            save_total_limit: 2,
            sample_prompt: None,
            sample_max_new_tokens: 48,
            accuracy_file: None,
            accuracy_samples: 200,
            deepspeed: None,
        }
    }
}

/// Where results go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub dir: PathBuf,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs/default") }
    }
}

fn default_min_frequency() -> u64 {
    2
}

fn yes() -> bool {
    true
}

fn default_loss_on() -> LossOn {
    LossOn::All
}
