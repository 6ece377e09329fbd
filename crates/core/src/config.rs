//! The run configuration: a TOML file with [model], [tokenizer], [data], [training] and [output] sections.
//!
//! Unknown keys are errors naming the key, its line and the closest valid key. Relative paths are relative to
//! the config file's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::LossOn;
use crate::error::{CoreError, Result};
use crate::model::{Architecture, ModelConfig, RopeConfig, RopeScaling};
use crate::train::ScheduleKind;

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub tokenizer: TokenizerSection,
    pub data: DataSection,
    #[serde(default)]
    pub training: TrainingSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub memopt: MemoptSection,
    /// LoRA finetuning (llmtrain-fastlora): present means the base is frozen and adapters train.
    #[serde(default)]
    pub lora: Option<LoraSection>,
    /// 4-bit base weights (QLoRA), in the terms of transformers' `BitsAndBytesConfig`.
    #[serde(default)]
    pub quantization: QuantizationSection,
}

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

/// A LoRA adapter to train, in PEFT's terms (`LoraConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    #[serde(default = "lora_rank")]
    pub r: usize,
    /// PEFT's `lora_alpha`; scaling = alpha / r (rsLoRA: alpha / √r).
    #[serde(default = "lora_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Module names matched at the end of each module's name (`["q_proj", "v_proj"]`), a regex matched against
    /// the whole name, or `"all-linear"`.
    #[serde(default = "all_linear")]
    pub target_modules: ModuleSelector,
    #[serde(default)]
    pub exclude_modules: Option<ModuleSelector>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    /// LoRA+: B's learning rate is the run's times this ratio (e.g. 16).
    #[serde(default)]
    pub loraplus_lr_ratio: Option<f64>,
}

/// A list of module names or one pattern (`"all-linear"` or a regex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSelector {
    Names(Vec<String>),
    Pattern(String),
}

fn lora_rank() -> usize {
    8
}
fn lora_alpha() -> f64 {
    16.0
}
fn all_linear() -> ModuleSelector {
    ModuleSelector::Pattern("all-linear".into())
}

/// The memory techniques (llmtrain-memopt), each off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoptSection {
    /// Keep only each decoder layer's input in the forward pass and recompute the layer in backward.
    pub gradient_checkpointing: bool,
    /// With checkpointing, keep each layer's input in host memory instead of on the device (for GPUs).
    pub checkpoint_offload: bool,
    /// The forward and backward passes' float type; master weights and optimizer state stay f32.
    pub mixed_precision: MixedPrecision,
    /// `eager` (scores and probabilities kept for backward) or `flash` (tiled, recomputed in backward).
    pub attention: AttentionImpl,
    /// Rows of queries and keys per tile of flash attention.
    pub flash_block: usize,
    /// The head fused with cross-entropy over chunks of rows, so the `[tokens × vocab]` logits never exist.
    pub fused_cross_entropy: bool,
    /// Rows per chunk of the fused head and loss.
    pub cross_entropy_chunk: usize,
    /// RMSNorm, SwiGLU and RoPE as single autodiff nodes that keep only their inputs (Unsloth's kernels).
    pub fused_kernels: bool,
    /// fp16 loss scaling, DeepSpeed's `fp16` section: `loss_scale` 0 means dynamic.
    pub loss_scale: f64,
    pub initial_scale_power: u32,
    pub loss_scale_window: u64,
    pub hysteresis: u32,
    pub min_loss_scale: f64,
}

impl Default for MemoptSection {
    fn default() -> Self {
        Self {
            gradient_checkpointing: false,
            checkpoint_offload: false,
            mixed_precision: MixedPrecision::No,
            attention: AttentionImpl::Eager,
            flash_block: 128,
            fused_cross_entropy: false,
            cross_entropy_chunk: 1024,
            fused_kernels: false,
            loss_scale: 0.0,
            initial_scale_power: 16,
            loss_scale_window: 1000,
            hysteresis: 2,
            min_loss_scale: 1.0,
        }
    }
}

/// The precision of the forward and backward passes (Accelerate's `mixed_precision`); master weights stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    #[default]
    No,
    Fp16,
    Bf16,
}

impl MixedPrecision {
    pub const ALL: &'static [Self] = &[Self::No, Self::Fp16, Self::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for MixedPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MixedPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let wanted = s.trim().to_lowercase();
        Self::ALL.iter().copied().find(|m| m.name() == wanted).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mixed precision `{s}`; expected one of: {}", names.join(", "))
        })
    }
}

/// Which attention kernel training uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionImpl {
    #[default]
    Eager,
    Flash,
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
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            max_steps: 100,
            learning_rate: 3e-4,
            lr_schedule: ScheduleKind::Cosine,
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

impl RunConfig {
    /// Reads and validates a config file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses TOML text; `path` names the file in errors, `base` anchors relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self> {
        let mut config: RunConfig = toml::from_str(text).map_err(|e| describe_toml_error(&e, text, path))?;
        config.resolve_paths(base);
        config.validate(path)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = join_lexically(base, p);
            }
        };
        if let Some(p) = self.model.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.tokenizer.path.as_mut() {
            fix(p);
        }
        self.tokenizer.train_files.iter_mut().for_each(fix);
        self.data.files.iter_mut().for_each(fix);
        if let Some(p) = self.training.accuracy_file.as_mut() {
            fix(p);
        }
        fix(&mut self.output.dir);
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: &str| Err(CoreError::key(path, key, message));
        let m = &self.model;
        let has_shape = m.hidden_size.is_some() || m.num_hidden_layers.is_some() || m.num_attention_heads.is_some();
        match (&m.path, has_shape) {
            (Some(_), true) => return bad("model.path", "give either `path` or a from-scratch shape, not both"),
            (None, false) => {
                return bad("model", "give `path` (an HF checkpoint directory) or a shape (hidden_size, ...)");
            }
            _ => {}
        }
        let t = &self.tokenizer;
        if t.path.is_some() && !t.train_files.is_empty() {
            return bad("tokenizer.path", "give either `path` or `train_files`, not both");
        }
        if !t.train_files.is_empty() && t.vocab_size.is_none() {
            return bad("tokenizer.vocab_size", "required with `train_files`");
        }
        if t.path.is_none() && t.train_files.is_empty() && m.path.is_none() {
            return bad("tokenizer", "a from-scratch model needs `path` or `train_files`");
        }
        if self.data.files.is_empty() {
            return bad("data.files", "list at least one file or directory");
        }
        if self.data.seq_len < 2 {
            return bad("data.seq_len", "must be at least 2");
        }
        if self.data.batch_size == 0 {
            return bad("data.batch_size", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.data.eval_fraction) {
            return bad("data.eval_fraction", "must be in [0, 1)");
        }
        let tr = &self.training;
        if tr.gradient_accumulation_steps == 0 {
            return bad("training.gradient_accumulation_steps", "must be at least 1");
        }
        if tr.learning_rate.is_nan() || tr.learning_rate <= 0.0 {
            return bad("training.learning_rate", "must be positive");
        }
        if tr.logging_steps == 0 {
            return bad("training.logging_steps", "must be at least 1");
        }
        if let Some(lora) = &self.lora {
            if lora.r == 0 {
                return bad("lora.r", "must be at least 1");
            }
            if !(0.0..1.0).contains(&lora.dropout) {
                return bad("lora.dropout", "must be in [0, 1)");
            }
            if lora.loraplus_lr_ratio.is_some_and(|r| r.is_nan() || r <= 0.0) {
                return bad("lora.loraplus_lr_ratio", "must be positive");
            }
        }
        let q = &self.quantization;
        if q.bnb_4bit_quant_type != "nf4" {
            return bad("quantization.bnb_4bit_quant_type", "only \"nf4\" is supported");
        }
        if q.load_in_4bit && self.lora.is_none() {
            return bad(
                "quantization.load_in_4bit",
                "4-bit weights are frozen: train adapters on them with a [lora] section",
            );
        }
        let mo = &self.memopt;
        if mo.cross_entropy_chunk == 0 {
            return bad("memopt.cross_entropy_chunk", "must be at least 1");
        }
        if mo.flash_block == 0 {
            return bad("memopt.flash_block", "must be at least 1");
        }
        if mo.checkpoint_offload && !mo.gradient_checkpointing {
            return bad("memopt.checkpoint_offload", "needs `gradient_checkpointing = true`");
        }
        if mo.loss_scale.is_nan() || mo.loss_scale < 0.0 {
            return bad("memopt.loss_scale", "must be 0 (dynamic) or a positive static scale");
        }
        if mo.min_loss_scale.is_nan() || mo.min_loss_scale <= 0.0 {
            return bad("memopt.min_loss_scale", "must be positive");
        }
        if mo.loss_scale_window == 0 {
            return bad("memopt.loss_scale_window", "must be at least 1");
        }
        if mo.hysteresis == 0 {
            return bad("memopt.hysteresis", "must be at least 1");
        }
        Ok(())
    }

    /// The from-scratch model shape for a tokenizer of `vocab_size` tokens.
    pub fn scratch_model(&self, vocab_size: usize) -> ModelConfig {
        let m = &self.model;
        let hidden = m.hidden_size.unwrap_or(256);
        let heads = m.num_attention_heads.unwrap_or(8);
        let mut c = ModelConfig::tiny_llama(
            vocab_size,
            hidden,
            m.num_hidden_layers.unwrap_or(4),
            heads,
            m.num_key_value_heads.unwrap_or(heads),
        );
        c.architecture = m.architecture.unwrap_or(Architecture::Llama);
        if let Some(v) = m.intermediate_size {
            c.intermediate_size = v;
        }
        if let Some(v) = m.head_dim {
            c.head_dim = v;
        }
        c.rope = RopeConfig { theta: m.rope_theta.unwrap_or(10_000.0), scaling: RopeScaling::Default };
        c.max_position_embeddings = m.max_position_embeddings.unwrap_or(2048);
        c.tie_word_embeddings = m.tie_word_embeddings.unwrap_or(false);
        c.rms_norm_eps = m.rms_norm_eps.unwrap_or(1e-5);
        c.qkv_bias = c.architecture == Architecture::Qwen2;
        c
    }
}

/// `base/rel` with `.` dropped and `dir/..` folded, so messages say `runs/x`, not `configs/../runs/x`.
fn join_lexically(base: &Path, rel: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in base.join(rel).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

/// One line: `file:line:col: message`, with the closest valid key for an unknown one.
fn describe_toml_error(err: &toml::de::Error, text: &str, path: &Path) -> CoreError {
    let message = err.message().trim().replace('\n', " ");
    let (line, column) = match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            (line, column)
        }
        None => (0, 0),
    };
    if let Some((unknown, closest)) = unknown_field(&message) {
        // The line without a trailing comment: `[trainig]  # typo`.
        let header = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
        let header = header.split('#').next().unwrap_or_default().trim();
        let header_name = header.trim_start_matches('[').trim_end_matches(']').split('.').next().unwrap_or_default();
        if header.starts_with('[') && header_name.trim() == unknown {
            return CoreError::Invalid(format!(
                "{}:{line}:1: unknown section [{unknown}]; {}",
                path.display(),
                section_suggestion(&unknown, &closest, &message)
            ));
        }
        // The table the key sits in: the last `[section]` header above it.
        let section = text
            .lines()
            .take(line)
            .filter_map(|l| l.trim().strip_prefix('[')?.split(']').next().map(str::to_string))
            .last()
            .map(|s| format!(" in [{s}]"))
            .unwrap_or_default();
        return CoreError::Invalid(format!(
            "{}:{line}:{column}: unknown key `{unknown}`{section}; did you mean `{closest}`?",
            path.display()
        ));
    }
    CoreError::Invalid(format!("{}:{line}:{column}: {message}", path.display()))
}

/// `did you mean [training]?` for a near miss, else the sections this build knows.
fn section_suggestion(unknown: &str, closest: &str, message: &str) -> String {
    if crate::paths::is_near_miss(unknown, closest, strsim::damerau_levenshtein(unknown, closest)) {
        return format!("did you mean [{closest}]?");
    }
    let known: Vec<String> = message.split('`').skip(3).step_by(2).map(|name| format!("[{name}]")).collect();
    format!("this build knows {}", known.join(", "))
}

/// From serde's "unknown field `x`, expected one of `a`, `b`": the unknown key and the closest expected one.
fn unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let closest = expected
        .iter()
        .min_by(|a, b| strsim::damerau_levenshtein(unknown, a).cmp(&strsim::damerau_levenshtein(unknown, b)))?;
    Some((unknown.to_string(), closest.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\nhidden_size = 64\n[tokenizer]\ntrain_files = [\"a.txt\"]\nvocab_size = 300\n\
                           [data]\nfiles = [\"a.txt\"]\nseq_len = 32\nbatch_size = 2\n";

    #[test]
    fn unknown_key_names_line_and_closest_key() {
        let text = format!("{MINIMAL}[training]\nmax_steps = 5\nlerning_rate = 0.1\n");
        let err = RunConfig::parse(&text, Path::new("run.toml"), Path::new(".")).unwrap_err().to_string();
        assert_eq!(err, "run.toml:12:1: unknown key `lerning_rate` in [training]; did you mean `learning_rate`?");
    }

    #[test]
    fn unknown_section_is_named_as_a_section() {
        let text = format!("{MINIMAL}[trainig]\nmax_steps = 5\n");
        let err = RunConfig::parse(&text, Path::new("run.toml"), Path::new(".")).unwrap_err().to_string();
        assert_eq!(err, "run.toml:10:1: unknown section [trainig]; did you mean [training]?");
        let text = format!("{MINIMAL}[trainig]  # a comment\nmax_steps = 5\n");
        let err = RunConfig::parse(&text, Path::new("run.toml"), Path::new(".")).unwrap_err().to_string();
        assert!(err.ends_with("unknown section [trainig]; did you mean [training]?"), "{err}");
        let text = format!("{MINIMAL}[dpo]\nbeta = 0.1\n");
        let err = RunConfig::parse(&text, Path::new("run.toml"), Path::new(".")).unwrap_err().to_string();
        assert!(
            err.starts_with("run.toml:10:1: unknown section [dpo]; this build knows [model], [tokenizer]"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = RunConfig::parse(MINIMAL, Path::new("cfg/run.toml"), Path::new("cfg")).unwrap();
        assert_eq!(c.data.files, vec![PathBuf::from("cfg/a.txt")]);
        let up = MINIMAL.replace("files = [\"a.txt\"]\nseq_len", "files = [\"../data/a.txt\"]\nseq_len");
        let c = RunConfig::parse(&up, Path::new("cfg/run.toml"), Path::new("./cfg")).unwrap();
        assert_eq!(c.data.files, vec![PathBuf::from("data/a.txt")]);
        assert_eq!(c.training.max_steps, 100);
    }

    #[test]
    fn both_path_and_shape_is_refused() {
        let text = MINIMAL.replace("[model]\n", "[model]\npath = \"m\"\n");
        let err = RunConfig::parse(&text, Path::new("r.toml"), Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("key `model.path`"), "{err}");
    }

    #[test]
    fn four_bit_weights_need_adapters_and_nf4() {
        let parse = |extra: &str| RunConfig::parse(&format!("{MINIMAL}{extra}"), Path::new("r.toml"), Path::new("."));
        let err = parse("[quantization]\nload_in_4bit = true\n").unwrap_err().to_string();
        assert!(err.contains("key `quantization.load_in_4bit`") && err.contains("[lora]"), "{err}");
        let err = parse("[lora]\n[quantization]\nload_in_4bit = true\nbnb_4bit_quant_type = \"fp4\"\n");
        assert!(err.unwrap_err().to_string().contains("quantization.bnb_4bit_quant_type"));
        let config = parse("[lora]\n[quantization]\nload_in_4bit = true\n").unwrap();
        assert_eq!(config.quantization.nf4(), Some(true), "double quantization by default, as QLoRA does");
        assert_eq!(parse("").unwrap().quantization.nf4(), None);
    }
}
