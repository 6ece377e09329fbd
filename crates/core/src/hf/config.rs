//! `config.json` in both transformers forms: 4.x (`rope_theta` + `rope_scaling`) and 5.x (`rope_parameters`).

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{CoreError, Result};
use crate::model::{Architecture, ModelConfig, RopeConfig, RopeScaling};

const SUPPORTED_MODEL_TYPES: &str = "llama, mistral, qwen2";
const SUPPORTED_ROPE_TYPES: &str = "default, linear, llama3";

/// A parsed config.json: the model shape plus the original JSON object, so saving keeps keys llmtrain does
/// not model (and the form, 4.x or 5.x, the file came in).
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub model: ModelConfig,
    /// What sits on the decoder: the language-model head, or a sequence-classification head (`score`).
    pub head: Head,
    /// The storage dtype named in the file (`dtype` or `torch_dtype`), e.g. "bfloat16".
    pub dtype: Option<String>,
    pub raw: Map<String, Value>,
}

/// The head a checkpoint's class puts on the decoder (its `architectures` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Head {
    /// `*ForCausalLM`: `lm_head` (or the tied embeddings).
    #[default]
    CausalLm,
    /// `*ForSequenceClassification`: `score.weight` `[num_labels, hidden]`, no bias, read at each row's last
    /// non-padding token. `num_labels` is the length of `id2label` (or `num_labels`; transformers' default 2).
    SequenceClassification { num_labels: usize },
}

impl HfConfig {
    /// Parses config.json text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| CoreError::json(path, &e))?;
        let Value::Object(raw) = value else {
            return Err(CoreError::Invalid(format!("{}: config.json must hold a JSON object", path.display())));
        };
        let reader = Reader { path, raw: &raw };
        let (architecture, sequence_classification) = reader.architecture()?;
        let head = if sequence_classification {
            Head::SequenceClassification { num_labels: reader.num_labels()? }
        } else {
            Head::CausalLm
        };
        let hidden_size = reader.usize("hidden_size", None)?;
        let num_attention_heads = reader.usize("num_attention_heads", None)?;
        let head_dim = match raw.get("head_dim") {
            None | Some(Value::Null) => {
                if !hidden_size.is_multiple_of(num_attention_heads) {
                    return Err(CoreError::key(
                        path,
                        "head_dim",
                        "absent, and hidden_size is not divisible by num_attention_heads",
                    ));
                }
                hidden_size / num_attention_heads
            }
            Some(_) => reader.usize("head_dim", None)?,
        };
        if let Some(act) = raw.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(CoreError::Unsupported {
                path: path.to_path_buf(),
                what: "hidden_act",
                found: act.to_string(),
                supported: "silu".into(),
            });
        }
        let attention_bias = reader.bool("attention_bias", false)?;
        let sliding_window = match architecture {
            Architecture::Mistral => reader.opt_usize("sliding_window")?,
            Architecture::Qwen2 if reader.bool("use_sliding_window", false)? => {
                return Err(CoreError::Unsupported {
                    path: path.to_path_buf(),
                    what: "use_sliding_window",
                    found: "true".into(),
                    supported: "false (Qwen2's per-layer sliding window is not implemented)".into(),
                });
            }
            _ => None,
        };
        let model = ModelConfig {
            architecture,
            vocab_size: reader.usize("vocab_size", None)?,
            hidden_size,
            intermediate_size: reader.usize("intermediate_size", None)?,
            num_hidden_layers: reader.usize("num_hidden_layers", None)?,
            num_attention_heads,
            num_key_value_heads: reader.usize("num_key_value_heads", Some(num_attention_heads))?,
            head_dim,
            rms_norm_eps: reader.f64("rms_norm_eps", Some(1e-6))?,
            rope: reader.rope()?,
            max_position_embeddings: reader.usize("max_position_embeddings", Some(2048))?,
            tie_word_embeddings: reader.bool("tie_word_embeddings", false)?,
            qkv_bias: architecture == Architecture::Qwen2 || attention_bias,
            o_bias: architecture == Architecture::Llama && attention_bias,
            mlp_bias: architecture == Architecture::Llama && reader.bool("mlp_bias", false)?,
            sliding_window,
            bos_token_id: reader.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: reader.token_ids("eos_token_id")?,
            pad_token_id: reader.token_ids("pad_token_id")?.first().copied(),
        };
        model.validate().map_err(|m| CoreError::Invalid(format!("{}: {m}", path.display())))?;
        let dtype = ["dtype", "torch_dtype"].iter().find_map(|k| raw.get(*k).and_then(Value::as_str)).map(String::from);
        Ok(Self { model, head, dtype, raw })
    }

    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        crate::paths::expect_model_dir(dir)?;
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| CoreError::io(&path, e))?;
        Self::parse(&text, &path)
    }

    /// A config for a model that did not come from a file (written in the 4.x form, which both 4.x and 5.x read).
    pub fn from_model(model: &ModelConfig) -> Self {
        Self { model: model.clone(), head: Head::CausalLm, dtype: None, raw: Map::new() }
    }

    /// The JSON to write: the original keys with the model's values laid over them, in the form the file had.
    pub fn to_json(&self, dtype: &str) -> Value {
        let m = &self.model;
        let mut out = self.raw.clone();
        let five_form = out.contains_key("rope_parameters");
        let mut set = |k: &str, v: Value| {
            out.insert(k.to_string(), v);
        };
        match self.head {
            Head::CausalLm => set("architectures", json!([m.architecture.class_name()])),
            Head::SequenceClassification { num_labels } => {
                set("architectures", json!([m.architecture.sequence_classification_class_name()]));
                // transformers counts the labels from id2label; keep the file's names when they fit.
                let fits =
                    |key: &str| self.raw.get(key).and_then(Value::as_object).is_some_and(|m| m.len() == num_labels);
                if !fits("id2label") || !fits("label2id") {
                    let names: Vec<String> = (0..num_labels).map(|i| format!("LABEL_{i}")).collect();
                    let id2label: Map<String, Value> =
                        names.iter().enumerate().map(|(i, n)| (i.to_string(), json!(n))).collect();
                    let label2id: Map<String, Value> =
                        names.iter().enumerate().map(|(i, n)| (n.clone(), json!(i))).collect();
                    set("id2label", Value::Object(id2label));
                    set("label2id", Value::Object(label2id));
                }
                if self.raw.contains_key("num_labels") {
                    set("num_labels", json!(num_labels));
                }
            }
        }
        set("model_type", json!(m.architecture.model_type()));
        set("vocab_size", json!(m.vocab_size));
        set("hidden_size", json!(m.hidden_size));
        set("intermediate_size", json!(m.intermediate_size));
        set("num_hidden_layers", json!(m.num_hidden_layers));
        set("num_attention_heads", json!(m.num_attention_heads));
        set("num_key_value_heads", json!(m.num_key_value_heads));
        set("head_dim", json!(m.head_dim));
        set("hidden_act", json!("silu"));
        set("rms_norm_eps", json!(m.rms_norm_eps));
        set("max_position_embeddings", json!(m.max_position_embeddings));
        set("tie_word_embeddings", json!(m.tie_word_embeddings));
        set("bos_token_id", json!(m.bos_token_id));
        set("pad_token_id", json!(m.pad_token_id));
        match m.eos_token_ids.as_slice() {
            [] => set("eos_token_id", Value::Null),
            [one] => set("eos_token_id", json!(one)),
            many => set("eos_token_id", json!(many)),
        }
        match m.architecture {
            Architecture::Llama => {
                set("attention_bias", json!(m.qkv_bias));
                set("mlp_bias", json!(m.mlp_bias));
            }
            Architecture::Mistral => set("sliding_window", json!(m.sliding_window)),
            Architecture::Qwen2 => set("use_sliding_window", json!(false)),
        }
        let scaling = rope_scaling_json(&m.rope.scaling);
        if five_form {
            let mut params = match scaling {
                Value::Object(o) => o,
                _ => Map::from_iter([("rope_type".to_string(), json!("default"))]),
            };
            params.insert("rope_theta".into(), json!(m.rope.theta));
            set("rope_parameters", Value::Object(params));
            set("dtype", json!(dtype));
        } else {
            set("rope_theta", json!(m.rope.theta));
            set("rope_scaling", scaling);
            set("torch_dtype", json!(dtype));
        }
        Value::Object(out)
    }
}

fn rope_scaling_json(scaling: &RopeScaling) -> Value {
    match *scaling {
        RopeScaling::Default => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    }
}

/// Typed access to config keys with errors that name the key.
struct Reader<'a> {
    path: &'a Path,
    raw: &'a Map<String, Value>,
}

impl Reader<'_> {
    /// The architecture, and whether the class is its `*ForSequenceClassification`.
    fn architecture(&self) -> Result<(Architecture, bool)> {
        let model_type = match self.raw.get("model_type") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(CoreError::key(self.path, "model_type", "must be a string")),
            None => return Err(CoreError::key(self.path, "model_type", "missing")),
        };
        let arch = match model_type {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(CoreError::Unsupported {
                    path: self.path.to_path_buf(),
                    what: "model_type",
                    found: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES.into(),
                });
            }
        };
        let mut sequence_classification = false;
        if let Some(Value::Array(classes)) = self.raw.get("architectures") {
            for class in classes.iter().filter_map(Value::as_str) {
                sequence_classification |= class == arch.sequence_classification_class_name();
                if class != arch.class_name() && class != arch.sequence_classification_class_name() {
                    return Err(CoreError::Unsupported {
                        path: self.path.to_path_buf(),
                        what: "architectures entry",
                        found: class.to_string(),
                        supported: format!(
                            "{} or {} (for model_type `{model_type}`)",
                            arch.class_name(),
                            arch.sequence_classification_class_name()
                        ),
                    });
                }
            }
        }
        Ok((arch, sequence_classification))
    }

    /// A sequence classifier's label count, as transformers counts it.
    fn num_labels(&self) -> Result<usize> {
        match self.raw.get("id2label") {
            Some(Value::Object(labels)) => Ok(labels.len()),
            Some(Value::Null) | None => self.usize("num_labels", Some(2)),
            Some(_) => Err(CoreError::key(self.path, "id2label", "expected an object of label names")),
        }
    }

    fn usize(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match (self.raw.get(key), default) {
            (None | Some(Value::Null), Some(d)) => Ok(d),
            (None, None) => Err(CoreError::key(self.path, key, "missing")),
            (Some(v), _) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| CoreError::key(self.path, key, format!("expected a non-negative integer, found {v}"))),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.usize(key, None).map(Some),
        }
    }

    fn f64(&self, key: &str, default: Option<f64>) -> Result<f64> {
        f64_in(self.path, self.raw, key, default)
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(CoreError::key(self.path, key, format!("expected true or false, found {v}"))),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad =
            |v: &Value| CoreError::key(self.path, key, format!("expected a token id or a list of them, found {v}"));
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| bad(v))).collect()
            }
            Some(v) => v.as_u64().map(|n| vec![n as u32]).ok_or_else(|| bad(v)),
        }
    }

    /// RoPE from `rope_parameters` (5.x) or `rope_theta` + `rope_scaling` (4.x).
    fn rope(&self) -> Result<RopeConfig> {
        let (params, params_key, theta) = match self.raw.get("rope_parameters") {
            Some(Value::Object(p)) => {
                let theta = f64_in(self.path, p, "rope_theta", Some(10_000.0))
                    .map_err(|_| CoreError::key(self.path, "rope_parameters.rope_theta", "expected a number"))?;
                (Some(p), "rope_parameters", theta)
            }
            Some(Value::Null) | None => {
                let scaling = match self.raw.get("rope_scaling") {
                    Some(Value::Object(s)) => Some(s),
                    Some(Value::Null) | None => None,
                    Some(_) => return Err(CoreError::key(self.path, "rope_scaling", "expected an object or null")),
                };
                (scaling, "rope_scaling", self.f64("rope_theta", Some(10_000.0))?)
            }
            Some(_) => return Err(CoreError::key(self.path, "rope_parameters", "expected an object")),
        };
        let Some(params) = params else {
            return Ok(RopeConfig { theta, scaling: RopeScaling::Default });
        };
        // Older files say `type` instead of `rope_type`.
        let rope_type =
            params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
        let key = |k: &str| format!("{params_key}.{k}");
        let num = |k: &str| {
            f64_in(self.path, params, k, None)
                .map_err(|_| CoreError::key(self.path, &key(k), "missing or not a number"))
        };
        let scaling = match rope_type {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: num("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            },
            other => {
                return Err(CoreError::Unsupported {
                    path: self.path.to_path_buf(),
                    what: "rope_type",
                    found: other.to_string(),
                    supported: SUPPORTED_ROPE_TYPES.into(),
                });
            }
        };
        Ok(RopeConfig { theta, scaling })
    }
}

fn f64_in(path: &Path, map: &Map<String, Value>, key: &str, default: Option<f64>) -> Result<f64> {
    match (map.get(key), default) {
        (None | Some(Value::Null), Some(d)) => Ok(d),
        (None, None) => Err(CoreError::key(path, key, "missing")),
        (Some(v), _) => v.as_f64().ok_or_else(|| CoreError::key(path, key, format!("expected a number, found {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOUR_X: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":32,
        "hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4,
        "num_key_value_heads":2,"rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,
        "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},
        "torch_dtype":"bfloat16","eos_token_id":[1,2]}"#;
    const FIVE_X: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":32,
        "hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4,
        "num_key_value_heads":2,"rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
        "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},
        "dtype":"bfloat16","eos_token_id":[1,2]}"#;

    #[test]
    fn both_rope_forms_parse_to_the_same_model() {
        let p = Path::new("config.json");
        let four = HfConfig::parse(FOUR_X, p).unwrap();
        let five = HfConfig::parse(FIVE_X, p).unwrap();
        assert_eq!(four.model, five.model);
        assert_eq!(four.dtype.as_deref(), Some("bfloat16"));
        assert!(matches!(four.model.rope.scaling, RopeScaling::Llama3 { original_max_position_embeddings: 8192, .. }));
        assert_eq!(four.model.head_dim, 4);
        assert_eq!(four.model.eos_token_ids, vec![1, 2]);
    }

    #[test]
    fn writing_keeps_the_form_and_round_trips() {
        let p = Path::new("config.json");
        for text in [FOUR_X, FIVE_X] {
            let cfg = HfConfig::parse(text, p).unwrap();
            let json = cfg.to_json("float32").to_string();
            assert_eq!(json.contains("rope_parameters"), text.contains("rope_parameters"));
            assert_eq!(HfConfig::parse(&json, p).unwrap().model, cfg.model);
        }
    }

    #[test]
    fn errors_name_the_key() {
        let p = Path::new("m/config.json");
        let err = HfConfig::parse(&FOUR_X.replace("\"llama\"", "\"gpt2\""), p).unwrap_err().to_string();
        assert_eq!(err, "m/config.json: unsupported model_type `gpt2`; supported: llama, mistral, qwen2");
        let err = HfConfig::parse(&FOUR_X.replace("\"hidden_size\":16", "\"hidden_size\":\"x\""), p).unwrap_err();
        assert!(err.to_string().contains("key `hidden_size`"), "{err}");
        let err = HfConfig::parse(&FOUR_X.replace("llama3", "yarn"), p).unwrap_err().to_string();
        assert!(err.contains("rope_type `yarn`"), "{err}");
        let err = HfConfig::parse("{\n \"a\": }", p).unwrap_err().to_string();
        assert!(err.starts_with("m/config.json:2:"), "{err}");
    }
}
