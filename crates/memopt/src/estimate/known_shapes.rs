//! The published shapes of the common model families, so that `--params 7B` can stand for a model before there is
//! a checkpoint: [`KNOWN_SHAPES`] (each entry's `config.json` sizes), [`Family`] (`--family`) and
//! [`standard_shape`] (the shape a size and family stand for).

use llmtrain_core::model::{Architecture, ModelConfig};

use super::parse_param_count;

/// A model family whose sizes share one naming (`--family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 2.
    Llama2,
    /// Llama 3 and 3.2.
    Llama3,
    /// Mistral.
    Mistral,
    /// Qwen2 and Qwen2.5.
    Qwen2,
}

impl Family {
    /// The families, in the order ambiguous sizes are resolved.
    pub const ALL: [Family; 4] = [Family::Llama2, Family::Llama3, Family::Mistral, Family::Qwen2];
    /// Their names on the command line, in the order of [`Family::ALL`].
    pub const NAMES: [&'static str; 4] = ["llama2", "llama3", "mistral", "qwen2"];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama2 => Self::NAMES[0],
            Family::Llama3 => Self::NAMES[1],
            Family::Mistral => Self::NAMES[2],
            Family::Qwen2 => Self::NAMES[3],
        }
    }

    /// The family of a command-line name.
    pub fn from_name(name: &str) -> Option<Family> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    fn architecture(self) -> Architecture {
        match self {
            Family::Llama2 | Family::Llama3 => Architecture::Llama,
            Family::Mistral => Architecture::Mistral,
            Family::Qwen2 => Architecture::Qwen2,
        }
    }
}

/// One published model's sizes (its `config.json` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownShape {
    /// The model's name, such as "Llama 2 7B".
    pub name: &'static str,
    pub family: Family,
    /// The size it is named by, as `--params` takes it: "7B", "0.5B".
    pub size: &'static str,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
}

/// The standard shapes, in the order an ambiguous size is resolved (the first of that size wins).
pub const KNOWN_SHAPES: [KnownShape; 15] = [
    shape("Llama 2 7B", Family::Llama2, "7B", [4096, 11008, 32, 32, 32, 32000], false),
    shape("Llama 2 13B", Family::Llama2, "13B", [5120, 13824, 40, 40, 40, 32000], false),
    shape("Llama 2 70B", Family::Llama2, "70B", [8192, 28672, 80, 64, 8, 32000], false),
    shape("Llama 3 8B", Family::Llama3, "8B", [4096, 14336, 32, 32, 8, 128256], false),
    shape("Llama 3 70B", Family::Llama3, "70B", [8192, 28672, 80, 64, 8, 128256], false),
    shape("Llama 3.2 1B", Family::Llama3, "1B", [2048, 8192, 16, 32, 8, 128256], true),
    shape("Llama 3.2 3B", Family::Llama3, "3B", [3072, 8192, 28, 24, 8, 128256], true),
    shape("Mistral 7B", Family::Mistral, "7B", [4096, 14336, 32, 32, 8, 32000], false),
    shape("Qwen2 0.5B", Family::Qwen2, "0.5B", [896, 4864, 24, 14, 2, 151936], true),
    shape("Qwen2 1.5B", Family::Qwen2, "1.5B", [1536, 8960, 28, 12, 2, 151936], true),
    shape("Qwen2 7B", Family::Qwen2, "7B", [3584, 18944, 28, 28, 4, 152064], false),
    shape("Qwen2 72B", Family::Qwen2, "72B", [8192, 29568, 80, 64, 8, 152064], false),
    shape("Qwen2.5 3B", Family::Qwen2, "3B", [2048, 11008, 36, 16, 2, 151936], true),
    shape("Qwen2.5 14B", Family::Qwen2, "14B", [5120, 13824, 48, 40, 8, 152064], false),
    shape("Qwen2.5 32B", Family::Qwen2, "32B", [5120, 27648, 64, 40, 8, 152064], false),
];

/// `sizes`: hidden, intermediate, layers, attention heads, KV heads, vocabulary.
const fn shape(name: &'static str, family: Family, size: &'static str, sizes: [usize; 6], tied: bool) -> KnownShape {
    let [hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size] =
        sizes;
    KnownShape {
        name,
        family,
        size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        vocab_size,
        tie_word_embeddings: tied,
    }
}

impl KnownShape {
    /// The parameter count the size names (7B: 7 000 000 000), not the shape's own count.
    pub fn nominal_params(&self) -> u64 {
        parse_param_count(self.size).unwrap_or(0)
    }

    /// The decoder of this shape. Only the sizes and biases an estimate reads are the published ones; RoPE, the
    /// norm's ε, context length and token ids are [`ModelConfig::tiny_llama`]'s defaults.
    pub fn config(&self) -> ModelConfig {
        let mut m = ModelConfig::tiny_llama(
            self.vocab_size,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads,
        );
        m.architecture = self.family.architecture();
        m.intermediate_size = self.intermediate_size;
        m.tie_word_embeddings = self.tie_word_embeddings;
        // Qwen2's q, k and v projections carry a bias (as `HfConfig` reads a Qwen2 config.json).
        m.qkv_bias = m.architecture == Architecture::Qwen2;
        m
    }

    /// "Llama 2 7B (hidden 4096, 32 layers, 32 heads / 32 KV heads, FFN 11008, vocab 32000)".
    pub fn describe(&self) -> String {
        format!(
            "{} (hidden {}, {} layers, {} heads / {} KV heads, FFN {}, vocab {}{}{})",
            self.name,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.intermediate_size,
            self.vocab_size,
            if self.tie_word_embeddings { ", tied embeddings" } else { "" },
            if self.family == Family::Qwen2 { ", q/k/v bias" } else { "" },
        )
    }

    /// The other families with a shape of this size, for a hint such as "--family mistral|qwen2".
    pub fn other_families(&self) -> Vec<Family> {
        let mut families: Vec<Family> = Vec::new();
        for other in KNOWN_SHAPES.iter().filter(|s| s.size == self.size && s.family != self.family) {
            if !families.contains(&other.family) {
                families.push(other.family);
            }
        }
        families
    }
}

/// The sizes with a standard shape (of `family`, or of any), smallest first: "0.5B, 1B, 1.5B, ...".
pub fn known_sizes(family: Option<Family>) -> String {
    let mut shapes: Vec<&KnownShape> = KNOWN_SHAPES.iter().filter(|s| family.is_none_or(|f| s.family == f)).collect();
    shapes.sort_by_key(|s| s.nominal_params());
    shapes.dedup_by_key(|s| s.size);
    shapes.iter().map(|s| s.size).collect::<Vec<_>>().join(", ")
}

/// A `--family` with no shape of the `--params` size.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--family {family} has no {size} shape; its sizes: {sizes}", family = .family.name(), sizes = known_sizes(Some(*.family)))]
pub struct NoSuchShape {
    pub family: Family,
    /// The size as given.
    pub size: String,
}

/// The standard shape named by a parameter count (`params`, as [`parse_param_count`] reads `--params`) and, when
/// given, a family: the first of [`KNOWN_SHAPES`] of that size. `Ok(None)`: no family has a shape of that size and
/// none was asked for; `size` is how the count was given, for the error.
pub fn standard_shape(
    params: u64,
    family: Option<Family>,
    size: &str,
) -> Result<Option<&'static KnownShape>, NoSuchShape> {
    let found = KNOWN_SHAPES.iter().find(|s| s.nominal_params() == params && family.is_none_or(|f| s.family == f));
    match (found, family) {
        (None, Some(family)) => Err(NoSuchShape { family, size: size.trim().to_string() }),
        (found, _) => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::super::count_params;
    use super::*;

    /// Each shape's count: the published one (the checkpoints' safetensors totals), and the size it is named by is
    /// the nearest size of its family. Plain rounding would not do: Qwen2 7B has 7.62B parameters, Llama 2 70B
    /// 68.98B and Llama 3.2 1B 1.24B (its 0.26B embedding counted once).
    #[test]
    fn every_shape_counts_the_published_parameters_and_is_nearest_its_size() {
        let published = [
            ("Llama 2 7B", 6_738_415_616_u64),
            ("Llama 2 13B", 13_015_864_320),
            ("Llama 2 70B", 68_976_648_192),
            ("Llama 3 8B", 8_030_261_248),
            ("Llama 3 70B", 70_553_706_496),
            ("Llama 3.2 1B", 1_235_814_400),
            ("Llama 3.2 3B", 3_212_749_824),
            ("Mistral 7B", 7_241_732_096),
            ("Qwen2 0.5B", 494_032_768),
            ("Qwen2 1.5B", 1_543_714_304),
            ("Qwen2 7B", 7_615_616_512),
            ("Qwen2 72B", 72_706_203_648),
            ("Qwen2.5 3B", 3_085_938_688),
            ("Qwen2.5 14B", 14_770_033_664),
            ("Qwen2.5 32B", 32_763_876_352),
        ];
        assert_eq!(published.len(), KNOWN_SHAPES.len());
        for (shape, (name, count)) in KNOWN_SHAPES.iter().zip(published) {
            assert_eq!(shape.name, name);
            let config = shape.config();
            assert_eq!(config.validate(), Ok(()), "{name}");
            let params = count_params(&config);
            assert_eq!(params, count, "{name}: {:.2}B", params as f64 / 1e9);
            let distance = |s: &KnownShape| (params as f64 - s.nominal_params() as f64).abs();
            let nearest = KNOWN_SHAPES
                .iter()
                .filter(|s| s.family == shape.family)
                .min_by(|a, b| distance(a).total_cmp(&distance(b)))
                .map(|s| s.size);
            assert_eq!(nearest, Some(shape.size), "{name}: {:.2}B", params as f64 / 1e9);
            assert!(distance(shape) / params as f64 <= 0.2, "{name}: {:.2}B", params as f64 / 1e9);
        }
        // As `estimate-memory` prints them.
        let printed = |name: &str| {
            let shape = KNOWN_SHAPES.iter().find(|s| s.name == name).map(KnownShape::config);
            shape.map(|m| format!("{:.2}", count_params(&m) as f64 / 1e9))
        };
        for (name, billions) in [
            ("Llama 2 7B", "6.74"),
            ("Llama 3 8B", "8.03"),
            ("Qwen2 0.5B", "0.49"),
            ("Qwen2 72B", "72.71"),
            ("Llama 3.2 1B", "1.24"),
        ] {
            assert_eq!(printed(name).as_deref(), Some(billions), "{name}");
        }
    }

    #[test]
    fn sizes_and_families_pick_a_shape() {
        let pick = |size: &str, family: Option<Family>| {
            let params = parse_param_count(size).unwrap_or(0);
            standard_shape(params, family, size).map(|s| s.map(|s| s.name))
        };
        assert_eq!(pick("7B", None), Ok(Some("Llama 2 7B")));
        assert_eq!(pick("7b", Some(Family::Mistral)), Ok(Some("Mistral 7B")));
        assert_eq!(pick("7B", Some(Family::Qwen2)), Ok(Some("Qwen2 7B")));
        assert_eq!(pick("70B", None), Ok(Some("Llama 2 70B")));
        assert_eq!(pick("70B", Some(Family::Llama3)), Ok(Some("Llama 3 70B")));
        assert_eq!(pick("3B", None), Ok(Some("Llama 3.2 3B")));
        assert_eq!(pick("3B", Some(Family::Qwen2)), Ok(Some("Qwen2.5 3B")));
        assert_eq!(pick("500M", None), Ok(Some("Qwen2 0.5B")));
        assert_eq!(pick("7.5B", None), Ok(None));
        let err = pick("13B", Some(Family::Qwen2)).unwrap_err();
        assert_eq!(err.to_string(), "--family qwen2 has no 13B shape; its sizes: 0.5B, 1.5B, 3B, 7B, 14B, 32B, 72B");
        assert_eq!(known_sizes(None), "0.5B, 1B, 1.5B, 3B, 7B, 8B, 13B, 14B, 32B, 70B, 72B");
        for family in Family::ALL {
            assert_eq!(Family::from_name(family.name()), Some(family));
        }
        let llama = KNOWN_SHAPES[0];
        assert_eq!(
            llama.describe(),
            "Llama 2 7B (hidden 4096, 32 layers, 32 heads / 32 KV heads, FFN 11008, vocab 32000)"
        );
        assert_eq!(llama.other_families(), vec![Family::Mistral, Family::Qwen2]);
    }
}
