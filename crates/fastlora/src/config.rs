//! PEFT's `LoraConfig`, as `adapter_config.json` holds it: read from PEFT's files (unknown keys tolerated, since
//! PEFT writes many that do not change the computation) and written back with its key names.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use llmtrain_core::error::one_line;

use crate::error::{LoraError, Result};

/// The file PEFT keeps an adapter's configuration in.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// Which linear layers get an adapter (PEFT's `target_modules` / `exclude_modules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Names matched against the end of each module's name (`q_proj` matches `model.layers.0.self_attn.q_proj`).
    List(Vec<String>),
    /// `"all-linear"`, or a regular expression that must match a module's whole name.
    Pattern(String),
}

impl TargetModules {
    /// Whether the module `name` (e.g. `model.layers.0.self_attn.q_proj`) is selected.
    pub fn matches(&self, name: &str) -> Result<bool> {
        match self {
            TargetModules::List(names) => Ok(names.iter().any(|t| name == t || name.ends_with(&format!(".{t}")))),
            // Every linear layer but the output head; llmtrain only adapts decoder linears, so all of them.
            TargetModules::Pattern(p) if p == "all-linear" => Ok(true),
            TargetModules::Pattern(p) => {
                let re = Regex::new(&format!("^(?:{p})$")).map_err(|e| LoraError::Config {
                    key: "target_modules".into(),
                    message: format!("invalid regular expression `{}`: {}", one_line(p), regex_error(&e)),
                })?;
                Ok(re.is_match(name))
            }
        }
    }
}

/// A regex error on one line: the parser's message draws the pattern with a caret under the fault, over lines.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().map(str::trim).rfind(|line| !line.is_empty()).unwrap_or_default();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// How new adapters start (PEFT's `init_lora_weights`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true`: A kaiming-uniform, B zeros (the adapter starts as a no-op); `false`: both kaiming-uniform.
    Default(bool),
    /// `"gaussian"`: A normal(0, 1/r), B zeros.
    Named(String),
}

/// A LoRA adapter's configuration, in PEFT's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default = "default_init")]
    pub init_lora_weights: InitLoraWeights,
    /// Per-module rank and alpha overrides, keyed by a pattern matched against the end of the module name.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    // What llmtrain does not implement; read so that a file asking for it is refused rather than misread.
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub layers_to_transform: Option<Value>,
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_init() -> InitLoraWeights {
    InitLoraWeights::Default(true)
}
fn default_bias() -> String {
    "none".into()
}
fn default_peft_type() -> String {
    "LORA".into()
}

impl LoraConfig {
    /// A config adapting `target_modules` with rank `r` and `lora_alpha`, PEFT's defaults otherwise.
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Self {
        Self {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules,
            exclude_modules: None,
            use_rslora: false,
            use_dora: false,
            init_lora_weights: default_init(),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: None,
            bias: default_bias(),
            fan_in_fan_out: false,
            modules_to_save: None,
            layers_to_transform: None,
            lora_bias: false,
            peft_type: default_peft_type(),
        }
    }

    /// The adapter a run config's `[lora]` section asks for; `base` names the base model in the adapter's config.
    pub fn from_section(section: &crate::LoraSection, base: Option<String>) -> Self {
        let mut config = Self::new(section.r, section.alpha, section.target_modules.clone());
        config.lora_dropout = section.dropout;
        config.exclude_modules = section.exclude_modules.clone();
        config.use_rslora = section.use_rslora;
        config.use_dora = section.use_dora;
        config.base_model_name_or_path = base;
        config
    }

    /// Refuses what llmtrain cannot reproduce exactly, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| Err(LoraError::Config { key: key.into(), message });
        if self.peft_type != "LORA" {
            return bad("peft_type", format!("`{}` is not a LoRA adapter", self.peft_type));
        }
        if self.r == 0 || self.rank_pattern.values().any(|&r| r == 0) {
            return bad("r", "the rank must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad("lora_dropout", format!("{} is not in [0, 1)", self.lora_dropout));
        }
        if self.bias != "none" {
            return bad("bias", format!("`{}`: only \"none\" is supported", self.bias));
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out", "Llama-family layers store [out, in]; `true` is not supported".into());
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return bad("modules_to_save", "fully trained extra modules are not supported".into());
        }
        if self.lora_bias {
            return bad("lora_bias", "a bias on lora_B is not supported".into());
        }
        if self.layers_to_transform.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("layers_to_transform", "not supported; use a target_modules regex".into());
        }
        match &self.init_lora_weights {
            InitLoraWeights::Default(_) => {}
            InitLoraWeights::Named(name) if name == "gaussian" => {}
            InitLoraWeights::Named(name) => {
                return bad("init_lora_weights", format!("`{name}`: supported are true, false and \"gaussian\""));
            }
        }
        Ok(())
    }

    /// Rank and scaling of the adapter on module `name`, after `rank_pattern` / `alpha_pattern`.
    pub fn rank_and_scaling(&self, name: &str) -> (usize, f64) {
        let r = pattern_value(&self.rank_pattern, name).unwrap_or(self.r);
        let alpha = pattern_value(&self.alpha_pattern, name).unwrap_or(self.lora_alpha);
        let scaling = if self.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        (r, scaling)
    }

    /// Reads `dir/adapter_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| LoraError::io(&path, e))?;
        let config: LoraConfig = serde_json::from_str(&text).map_err(|e| LoraError::Json {
            path: path.clone(),
            line: e.line(),
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
        })?;
        config.validate().map_err(|e| e.in_file(&path))?;
        Ok(config)
    }

    /// The JSON PEFT writes: its key names, sorted, with the values it needs to rebuild the adapter.
    pub fn to_json(&self) -> Value {
        let mut map = BTreeMap::new();
        let mut put = |k: &str, v: Value| {
            map.insert(k.to_string(), v);
        };
        put("peft_type", json!(self.peft_type));
        put("task_type", json!("CAUSAL_LM"));
        put("base_model_name_or_path", json!(self.base_model_name_or_path));
        put("r", json!(self.r));
        put("lora_alpha", json!(self.lora_alpha));
        put("lora_dropout", json!(self.lora_dropout));
        put("target_modules", serde_json::to_value(&self.target_modules).unwrap_or(Value::Null));
        put("exclude_modules", serde_json::to_value(&self.exclude_modules).unwrap_or(Value::Null));
        put("use_rslora", json!(self.use_rslora));
        put("use_dora", json!(self.use_dora));
        put("init_lora_weights", serde_json::to_value(&self.init_lora_weights).unwrap_or(Value::Null));
        put("rank_pattern", json!(self.rank_pattern));
        put("alpha_pattern", json!(self.alpha_pattern));
        put("bias", json!(self.bias));
        put("fan_in_fan_out", json!(false));
        put("modules_to_save", Value::Null);
        put("layers_to_transform", Value::Null);
        put("lora_bias", json!(false));
        put("layers_pattern", Value::Null);
        put("inference_mode", json!(true));
        put("revision", Value::Null);
        serde_json::to_value(map).unwrap_or(Value::Null)
    }
}

/// PEFT's pattern lookup: the first key whose pattern matches the end of the name at a dot boundary.
fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, name: &str) -> Option<T> {
    patterns.iter().find_map(|(pattern, value)| {
        let re = Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$")).ok()?;
        re.is_match(name).then_some(*value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_targets_match_name_endings_and_regexes_match_whole_names() {
        let list = TargetModules::List(vec!["q_proj".into(), "v_proj".into()]);
        assert!(list.matches("model.layers.0.self_attn.q_proj").unwrap());
        assert!(!list.matches("model.layers.0.self_attn.k_proj").unwrap());
        let re = TargetModules::Pattern(r".*\.1\.mlp\.(up|down)_proj".into());
        assert!(re.matches("model.layers.1.mlp.up_proj").unwrap());
        assert!(!re.matches("model.layers.11.mlp.up_proj").unwrap());
        assert!(TargetModules::Pattern("all-linear".into()).matches("model.layers.3.mlp.gate_proj").unwrap());
        assert!(TargetModules::Pattern("(".into()).matches("x").is_err());
    }

    #[test]
    fn an_invalid_regex_is_a_one_line_error() {
        // Found by `cargo xtask fuzz --target adapter-config`: the regex crate's message spans three lines.
        let err = TargetModules::Pattern("\\".into()).matches("x").unwrap_err().to_string();
        assert_eq!(err, "adapter config key `target_modules`: invalid regular expression `\\`: unclosed group");
    }

    #[test]
    fn scaling_is_alpha_over_r_or_over_its_root_and_patterns_override() {
        let mut c = LoraConfig::new(16, 32.0, TargetModules::List(vec!["q_proj".into()]));
        assert_eq!(c.rank_and_scaling("model.layers.0.self_attn.q_proj"), (16, 2.0));
        c.use_rslora = true;
        assert_eq!(c.rank_and_scaling("model.layers.0.self_attn.q_proj"), (16, 8.0));
        c.use_rslora = false;
        c.rank_pattern.insert("v_proj".into(), 4);
        assert_eq!(c.rank_and_scaling("model.layers.0.self_attn.v_proj"), (4, 8.0));
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        let mut c = LoraConfig::new(8, 8.0, TargetModules::List(vec!["q_proj".into()]));
        c.bias = "all".into();
        assert!(c.validate().unwrap_err().to_string().contains("bias"));
    }
}
