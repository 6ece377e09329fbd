//! The run configuration: a TOML file with [model], [tokenizer], [data], [training], [output] and
//! [quantization] sections, which llmtrain-core owns, and the sections of the role crates (`[memopt]`, `[lora]`,
//! ...), each parsed and checked by the crate that owns it through [`ConfigSection`]. A section nobody owns is
//! refused here, naming the sections this build knows.
//!
//! Unknown keys are errors naming the key, its line and the closest valid key. Relative paths are relative to
//! the config file's directory.

mod sections;
mod toml_error;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::model::compute::{AttentionImpl, MixedPrecision};
pub use sections::{DataSection, ModelSection, OutputSection, QuantizationSection, TokenizerSection, TrainingSection};

use crate::error::{CoreError, Result};
use crate::model::{Architecture, ModelConfig, RopeConfig, RopeScaling};
use toml_error::{describe_toml_error, unknown_section};

/// The sections llmtrain-core owns, in the order messages list them.
pub const CORE_SECTIONS: &[&str] = &["model", "tokenizer", "data", "training", "output", "quantization"];

/// A whole run: the sections core owns, and the file's text for the sections role crates read with
/// [`RunConfig::section`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub tokenizer: TokenizerSection,
    pub data: DataSection,
    #[serde(default)]
    pub training: TrainingSection,
    #[serde(default)]
    pub output: OutputSection,
    /// 4-bit base weights (QLoRA), in the terms of transformers' `BitsAndBytesConfig`.
    #[serde(default)]
    pub quantization: QuantizationSection,
    #[serde(skip)]
    source: Source,
}

/// The file a config was read from, for the role crates' sections.
#[derive(Debug, Clone, Default)]
struct Source {
    text: String,
    path: PathBuf,
    /// The directory relative paths are anchored at.
    base: PathBuf,
    sections: Vec<String>,
}

/// A `[NAME]` section of the run config that a role crate owns: it names, parses (serde, with
/// `deny_unknown_fields`) and checks its own keys.
pub trait ConfigSection: DeserializeOwned {
    const NAME: &'static str;
    /// Refuses values that cannot work, naming the key within the section.
    fn validate(&self) -> std::result::Result<(), InvalidKey> {
        Ok(())
    }
}

/// A key of a section whose value cannot work.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidKey {
    pub key: String,
    pub message: String,
}

impl InvalidKey {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Self { key: key.to_string(), message: message.into() }
    }
}

/// Deserializes only the `[T::NAME]` table of a whole file, from the file's own text so errors keep their lines.
struct OneSection<T>(Option<T>);

impl<'de, T: ConfigSection> Deserialize<'de> for OneSection<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Pick<T>(PhantomData<T>);
        impl<'de, T: ConfigSection> Visitor<'de> for Pick<T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a run config with an optional [{}] table", T::NAME)
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> std::result::Result<Option<T>, M::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == T::NAME {
                        found = Some(map.next_value::<T>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }
        deserializer.deserialize_map(Pick(PhantomData)).map(OneSection)
    }
}

impl RunConfig {
    /// Reads and validates a config file; relative paths become relative to its directory. `role_sections` are
    /// the sections the role crates of this build own (each crate's [`ConfigSection::NAME`]); any other section
    /// is refused.
    pub fn load(path: &Path, role_sections: &[&str]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base, role_sections)
    }

    /// Parses TOML text; `path` names the file in errors, `base` anchors relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path, role_sections: &[&str]) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|e| describe_toml_error(&e, text, path))?;
        let known: Vec<&str> = CORE_SECTIONS.iter().chain(role_sections).copied().collect();
        if let Some(unknown) = table.keys().find(|name| !known.contains(&name.as_str())) {
            return Err(unknown_section(text, path, unknown, &known));
        }
        let mut config: RunConfig = toml::from_str(text).map_err(|e| describe_toml_error(&e, text, path))?;
        config.source = Source {
            text: text.to_string(),
            path: path.to_path_buf(),
            base: base.to_path_buf(),
            sections: table.keys().cloned().collect(),
        };
        config.resolve_paths(base);
        config.validate(path)?;
        Ok(config)
    }

    /// The `[T::NAME]` section a role crate owns, parsed and checked (errors name the file, line and key), or
    /// `None` when the file has none.
    pub fn section<T: ConfigSection>(&self) -> Result<Option<T>> {
        let Source { text, path, .. } = &self.source;
        let OneSection(section) =
            toml::from_str::<OneSection<T>>(text).map_err(|e| describe_toml_error(&e, text, path))?;
        if let Some(section) = &section {
            section.validate().map_err(|e| CoreError::key(path, &format!("{}.{}", T::NAME, e.key), &e.message))?;
        }
        Ok(section)
    }

    /// The file the config was read from, for messages.
    pub fn path(&self) -> &Path {
        &self.source.path
    }

    /// A path from a role section, anchored as the core sections' paths are: relative to the config's directory.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_relative() { join_lexically(&self.source.base, path) } else { path.to_path_buf() }
    }

    /// Whether the file has a `[name]` section.
    pub fn has_section(&self, name: &str) -> bool {
        self.source.sections.iter().any(|s| s == name)
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
        if let Some(p) = self.training.deepspeed.as_mut() {
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
        let q = &self.quantization;
        if q.bnb_4bit_quant_type != "nf4" {
            return bad("quantization.bnb_4bit_quant_type", "only \"nf4\" is supported");
        }
        if q.load_in_4bit && !self.has_section("lora") {
            return bad(
                "quantization.load_in_4bit",
                "4-bit weights are frozen: train adapters on them with a [lora] section",
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The role crates' sections, as the `llmtrain` command passes them.
    const ROLES: &[&str] = &["memopt", "lora"];

    const MINIMAL: &str = "[model]\nhidden_size = 64\n[tokenizer]\ntrain_files = [\"a.txt\"]\nvocab_size = 300\n\
                           [data]\nfiles = [\"a.txt\"]\nseq_len = 32\nbatch_size = 2\n";

    #[test]
    fn unknown_key_names_line_and_closest_key() {
        let text = format!("{MINIMAL}[training]\nmax_steps = 5\nlerning_rate = 0.1\n");
        let err = RunConfig::parse(&text, Path::new("run.toml"), Path::new("."), ROLES).unwrap_err().to_string();
        assert_eq!(err, "run.toml:12:1: unknown key `lerning_rate` in [training]; did you mean `learning_rate`?");
    }

    #[test]
    fn unknown_section_is_named_as_a_section() {
        let text = format!("{MINIMAL}[trainig]\nmax_steps = 5\n");
        let err = RunConfig::parse(&text, Path::new("run.toml"), Path::new("."), ROLES).unwrap_err().to_string();
        assert_eq!(err, "run.toml:10:1: unknown section [trainig]; did you mean [training]?");
        let text = format!("{MINIMAL}[trainig]  # a comment\nmax_steps = 5\n");
        let err = RunConfig::parse(&text, Path::new("run.toml"), Path::new("."), ROLES).unwrap_err().to_string();
        assert!(err.ends_with("unknown section [trainig]; did you mean [training]?"), "{err}");
        let text = format!("{MINIMAL}[dpo]\nbeta = 0.1\n");
        let err = RunConfig::parse(&text, Path::new("run.toml"), Path::new("."), ROLES).unwrap_err().to_string();
        assert!(
            err.starts_with("run.toml:10:1: unknown section [dpo]; this build knows [model], [tokenizer]"),
            "{err}"
        );
        assert!(err.ends_with("[memopt], [lora]"), "the role crates' sections are listed too: {err}");
    }

    /// A role crate's section: parsed from the file on demand, its keys and values checked with the file's lines.
    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Memopt {
        flash_block: usize,
    }

    impl ConfigSection for Memopt {
        const NAME: &'static str = "memopt";
        fn validate(&self) -> std::result::Result<(), InvalidKey> {
            if self.flash_block == 0 {
                return Err(InvalidKey::new("flash_block", "must be at least 1"));
            }
            Ok(())
        }
    }

    #[test]
    fn a_role_section_is_parsed_and_checked_by_its_owner() {
        let parse =
            |extra: &str| RunConfig::parse(&format!("{MINIMAL}{extra}"), Path::new("r.toml"), Path::new("."), ROLES);
        assert_eq!(parse("").unwrap().section::<Memopt>().unwrap(), None);
        assert_eq!(
            parse("[memopt]\nflash_block = 8\n").unwrap().section::<Memopt>().unwrap(),
            Some(Memopt { flash_block: 8 })
        );
        let err = parse("[memopt]\nflash_blok = 8\n").unwrap().section::<Memopt>().unwrap_err().to_string();
        assert_eq!(err, "r.toml:11:1: unknown key `flash_blok` in [memopt]; did you mean `flash_block`?");
        let err = parse("[memopt]\nflash_block = 0\n").unwrap().section::<Memopt>().unwrap_err().to_string();
        assert!(err.contains("key `memopt.flash_block`") && err.contains("at least 1"), "{err}");
        let err = RunConfig::parse(&format!("{MINIMAL}[memopt]\n"), Path::new("r.toml"), Path::new("."), &[]);
        assert!(
            err.unwrap_err().to_string().contains("unknown section [memopt]"),
            "a build without the role refuses it"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = RunConfig::parse(MINIMAL, Path::new("cfg/run.toml"), Path::new("cfg"), ROLES).unwrap();
        assert_eq!(c.data.files, vec![PathBuf::from("cfg/a.txt")]);
        let up = MINIMAL.replace("files = [\"a.txt\"]\nseq_len", "files = [\"../data/a.txt\"]\nseq_len");
        let c = RunConfig::parse(&up, Path::new("cfg/run.toml"), Path::new("./cfg"), ROLES).unwrap();
        assert_eq!(c.data.files, vec![PathBuf::from("data/a.txt")]);
        assert_eq!(c.training.max_steps, 100);
    }

    #[test]
    fn both_path_and_shape_is_refused() {
        let text = MINIMAL.replace("[model]\n", "[model]\npath = \"m\"\n");
        let err = RunConfig::parse(&text, Path::new("r.toml"), Path::new("."), ROLES).unwrap_err().to_string();
        assert!(err.contains("key `model.path`"), "{err}");
    }

    #[test]
    fn four_bit_weights_need_adapters_and_nf4() {
        let parse =
            |extra: &str| RunConfig::parse(&format!("{MINIMAL}{extra}"), Path::new("r.toml"), Path::new("."), ROLES);
        let err = parse("[quantization]\nload_in_4bit = true\n").unwrap_err().to_string();
        assert!(err.contains("key `quantization.load_in_4bit`") && err.contains("[lora]"), "{err}");
        let err = parse("[lora]\n[quantization]\nload_in_4bit = true\nbnb_4bit_quant_type = \"fp4\"\n");
        assert!(err.unwrap_err().to_string().contains("quantization.bnb_4bit_quant_type"));
        let config = parse("[lora]\n[quantization]\nload_in_4bit = true\n").unwrap();
        assert_eq!(config.quantization.nf4(), Some(true), "double quantization by default, as QLoRA does");
        assert_eq!(parse("").unwrap().quantization.nf4(), None);
    }
}
