//! Tokenizers: `tokenizer.json` through the `tokenizers` crate, byte-level BPE training, and the special tokens
//! and chat template from `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};
use tokenizers::{Tokenizer, TokenizerBuilder};

use crate::chat::{ChatTemplate, Message};
use crate::error::{CoreError, Result};
use crate::fsutil::write_dir_atomic;
use crate::hf::write_json;

/// The special tokens of a tokenizer trained by llmtrain, in id order.
pub const TRAINED_SPECIAL_TOKENS: [&str; 5] = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"];

/// The ChatML template (as Qwen2 uses) given to tokenizers llmtrain trains.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub chat_template: Option<String>,
    /// Whether encoding adds special tokens (transformers' default for `encode`).
    pub add_special_tokens: bool,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` and `dir/chat_template.jinja`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !dir.exists() {
            return Err(crate::paths::not_found(dir, "tokenizer directory"));
        }
        if !path.exists() {
            if let Some(hint) = crate::paths::run_output_hint(dir) {
                return Err(CoreError::Invalid(hint));
            }
            return Err(CoreError::Tokenizer { path, message: "not found".into() });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| CoreError::io(&path, e))?;
        // The JSON is read as values first: the `tokenizers` crate panics on a syntax error or an out-of-range
        // number inside `decoder` (its untagged helper's error is `expect`ed); this also gives the line and column.
        let value: Value = serde_json::from_str(&text).map_err(|e| CoreError::json(&path, &e))?;
        check_bpe_merges(&value).map_err(|message| CoreError::key(&path, "model.merges", message))?;
        let inner = text
            .parse::<Tokenizer>()
            .map_err(|e| CoreError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        if let Some(processor) = inner.get_post_processor() {
            let value = serde_json::to_value(processor)
                .map_err(|e| CoreError::Tokenizer { path: path.clone(), message: e.to_string() })?;
            check_templates(&value).map_err(|message| CoreError::key(&path, "post_processor", message))?;
        }
        let mut tok = Self {
            inner,
            bos_token: None,
            eos_token: None,
            pad_token: None,
            chat_template: None,
            add_special_tokens: true,
        };
        let config_path = dir.join("tokenizer_config.json");
        if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| CoreError::io(&config_path, e))?;
            let config: Value = serde_json::from_str(&text).map_err(|e| CoreError::json(&config_path, &e))?;
            tok.apply_config(&config, &config_path)?;
        }
        // transformers 5.x keeps the template in its own file.
        let template_path = dir.join("chat_template.jinja");
        if template_path.exists() {
            let text = std::fs::read_to_string(&template_path).map_err(|e| CoreError::io(&template_path, e))?;
            tok.chat_template = Some(text);
        }
        Ok(tok)
    }

    fn apply_config(&mut self, config: &Value, path: &Path) -> Result<()> {
        // Special tokens are either plain strings or AddedToken objects with a `content` key.
        let token = |key: &str| -> Result<Option<String>> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Object(o)) => match o.get("content").and_then(Value::as_str) {
                    Some(s) => Ok(Some(s.to_string())),
                    None => Err(CoreError::key(path, &format!("{key}.content"), "missing")),
                },
                Some(other) => Err(CoreError::key(path, key, format!("expected a string, found {other}"))),
            }
        };
        self.bos_token = token("bos_token")?;
        self.eos_token = token("eos_token")?;
        self.pad_token = token("pad_token")?;
        self.chat_template = match config.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // Older files keep a list of named templates; "default" is the one apply_chat_template uses.
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| named.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from),
            Some(_) => {
                return Err(CoreError::key(path, "chat_template", "expected a string or a list of named templates"));
            }
        };
        Ok(())
    }

    /// Token ids of `text`, with the tokenizer's special tokens when `add_special_tokens` is set.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, self.add_special_tokens)
    }

    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| CoreError::Tokenizer { path: PathBuf::from("tokenizer.json"), message: e.to_string() })
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| CoreError::Tokenizer { path: PathBuf::from("tokenizer.json"), message: e.to_string() })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// Renders `messages` with this tokenizer's chat template and its bos/eos tokens.
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let Some(source) = &self.chat_template else {
            return Err(CoreError::Template("this tokenizer has no chat_template in tokenizer_config.json".into()));
        };
        ChatTemplate::new(source)?.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }

    /// Writes tokenizer.json and tokenizer_config.json into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
        let path = dir.join("tokenizer.json");
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| CoreError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        crate::fsutil::write_atomic(&path, text.as_bytes())?;
        let mut added = serde_json::Map::new();
        for (id, token) in self.inner.get_added_tokens_decoder() {
            added.insert(
                id.to_string(),
                json!({"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                       "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}),
            );
        }
        let config = json!({
            "added_tokens_decoder": added,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": null,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000_000_000_000u64,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        write_json(&dir.join("tokenizer_config.json"), &config)
    }
}

/// What `llmtrain tokenizer train` builds.
#[derive(Debug, Clone)]
pub struct BpeTrainingOptions {
    pub vocab_size: usize,
    pub min_frequency: u64,
}

/// Trains a byte-level BPE tokenizer (GPT-2/Llama 3 style: no unknown token, any byte sequence encodes) on text
/// files. Special tokens are [`TRAINED_SPECIAL_TOKENS`]; encoding prepends `<s>`; the chat template is ChatML.
pub fn train_bpe(files: &[PathBuf], options: &BpeTrainingOptions) -> Result<TextTokenizer> {
    for file in files {
        if !file.is_file() {
            return Err(CoreError::Tokenizer { path: file.clone(), message: "training file not found".into() });
        }
    }
    let min_vocab = TRAINED_SPECIAL_TOKENS.len() + 256;
    if options.vocab_size < min_vocab {
        return Err(CoreError::Invalid(format!(
            "--vocab-size {} is too small: a byte-level BPE needs at least {min_vocab} (256 bytes + {} special tokens)",
            options.vocab_size,
            TRAINED_SPECIAL_TOKENS.len()
        )));
    }
    let specials: Vec<AddedToken> = TRAINED_SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(options.vocab_size)
        .min_frequency(options.min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let post = TemplateProcessing::builder()
        .try_single("<s> $A")
        .and_then(|b| b.try_pair("<s> $A <s> $B"))
        .map_err(|e| CoreError::Invalid(e.to_string()))?
        .special_tokens(vec![("<s>", 1)])
        .build()
        .map_err(|e| CoreError::Invalid(e.to_string()))?;
    let mut builder: tokenizers::TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())))
        .with_post_processor(Some(PostProcessorWrapper::Template(post)))
        .build()
        .map_err(|e| CoreError::Invalid(e.to_string()))?;
    let names: Vec<String> = files.iter().map(|f| f.to_string_lossy().into_owned()).collect();
    builder
        .train_from_files(&mut trainer, names)
        .map_err(|e| CoreError::Tokenizer { path: files[0].clone(), message: e.to_string() })?;
    let inner: Tokenizer = builder.into();
    Ok(TextTokenizer {
        inner,
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        pad_token: Some("<pad>".into()),
        chat_template: Some(CHATML_TEMPLATE.into()),
        add_special_tokens: true,
    })
}

/// Trains a tokenizer and writes it into `out` (tokenizer.json + tokenizer_config.json), all or nothing.
pub fn train_bpe_to_dir(files: &[PathBuf], options: &BpeTrainingOptions, out: &Path) -> Result<TextTokenizer> {
    let tok = train_bpe(files, options)?;
    write_dir_atomic(out, |dir| tok.save(dir))?;
    Ok(tok)
}

/// Refuses a BPE merge whose second token does not begin with `continuing_subword_prefix` and is too short to cut
/// it off (or would be cut inside a character): `tokenizers` cuts the prefix's length off it by byte index, a panic.
fn check_bpe_merges(tokenizer: &Value) -> std::result::Result<(), String> {
    let model = tokenizer.get("model");
    let Some(prefix) = model.and_then(|m| m.get("continuing_subword_prefix")).and_then(Value::as_str) else {
        return Ok(());
    };
    let merges = model.and_then(|m| m.get("merges")).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    for (i, merge) in merges.iter().enumerate() {
        let second = match merge {
            // The legacy form, "a b".
            Value::String(line) => line.split(' ').nth(1),
            Value::Array(pair) => pair.get(1).and_then(Value::as_str),
            _ => None,
        };
        if let Some(second) = second
            && second.get(prefix.len()..).is_none()
        {
            return Err(format!("merge {i}: {second:?} does not begin with the continuing_subword_prefix {prefix:?}"));
        }
    }
    Ok(())
}

/// Refuses a `TemplateProcessing` post-processor (anywhere in `value`, a serialized post-processor) that
/// `tokenizers` would panic on when encoding: it checks templates built in code, not ones read from JSON. A
/// template may name only special tokens it defines, each with as many ids as tokens, and the single-sequence
/// template only sequence A.
fn check_templates(value: &Value) -> std::result::Result<(), String> {
    let map = match value {
        Value::Array(items) => return items.iter().try_for_each(check_templates),
        Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("TemplateProcessing") => map,
        Value::Object(map) => return map.values().try_for_each(check_templates),
        _ => return Ok(()),
    };
    let defined = map.get("special_tokens").and_then(Value::as_object);
    for template in ["single", "pair"] {
        for piece in map.get(template).and_then(Value::as_array).into_iter().flatten() {
            if let Some(id) = piece.pointer("/SpecialToken/id").and_then(Value::as_str) {
                let Some(token) = defined.and_then(|d| d.get(id)) else {
                    return Err(format!("`{template}` names the special token {id:?}, which `special_tokens` lacks"));
                };
                let count = |key: &str| token.get(key).and_then(Value::as_array).map_or(0, Vec::len);
                if count("ids") != count("tokens") {
                    return Err(format!(
                        "special token {id:?} has {} ids but {} tokens",
                        count("ids"),
                        count("tokens")
                    ));
                }
            }
            if template == "single" && piece.pointer("/Sequence/id").and_then(Value::as_str) == Some("B") {
                return Err("`single` names sequence B; a single sequence has only A".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_round_trips_text_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus.txt");
        std::fs::write(&corpus, "To be, or not to be, that is the question.\n".repeat(50)).unwrap();
        let out = dir.path().join("tok");
        let tok = train_bpe_to_dir(&[corpus], &BpeTrainingOptions { vocab_size: 300, min_frequency: 2 }, &out).unwrap();
        let ids = tok.encode("to be or not").unwrap();
        assert_eq!(ids[0], 1, "encoding starts with <s>");
        assert_eq!(tok.decode(&ids, true).unwrap(), "to be or not");
        let back = TextTokenizer::load(&out).unwrap();
        assert_eq!(back.encode("to be or not").unwrap(), ids);
        assert_eq!(back.eos_token_id(), Some(2));
        assert!(back.vocab_size() <= 300 && back.vocab_size() > 261, "{}", back.vocab_size());
        let chat = back.apply_chat_template(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(chat, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn a_tokenizer_json_cut_short_at_the_decoder_is_an_error_not_a_panic() {
        // Found by `cargo xtask fuzz --target tokenizer-json`: `tokenizers` panics ("Helper") on it.
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            std::fs::write(dir.path().join("tokenizer.json"), text).unwrap();
            TextTokenizer::load(dir.path()).err().expect("refused").to_string()
        };
        let err = load(r#"{"version": "1.0", "decoder": "#);
        assert!(err.contains("tokenizer.json:1:") && err.contains("invalid JSON"), "{err}");
        // Also found: a number too large for f64 there.
        let err = load(r#"{"version": "1.0", "decoder": {"type": "Fuse", "x": 1e400}}"#);
        assert!(err.contains("tokenizer.json:1:") && err.contains("number out of range"), "{err}");
    }

    #[test]
    fn a_merge_shorter_than_the_subword_prefix_is_an_error_not_a_panic() {
        // Found by `cargo xtask fuzz --target tokenizer-json`: `tokenizers` slices the prefix off by byte index.
        let dir = tempfile::tempdir().unwrap();
        let load = |merges: Value| {
            let model = json!({"type": "BPE", "continuing_subword_prefix": "##", "unk_token": null,
                "vocab": {"a": 0, "##b": 1, "ab": 2, "b": 3}, "merges": merges});
            let text = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null, "model": model});
            std::fs::write(dir.path().join("tokenizer.json"), text.to_string()).unwrap();
            TextTokenizer::load(dir.path()).map(|t| t.vocab_size()).map_err(|e| e.to_string())
        };
        assert_eq!(load(json!([["a", "##b"]])), Ok(4));
        let err = load(json!([["a", "b"]])).unwrap_err();
        assert!(
            err.ends_with(
                "key `model.merges`: merge 0: \"b\" does not begin with the continuing_subword_prefix \"##\""
            )
        );
        assert!(load(json!(["a b"])).is_err());
    }

    #[test]
    fn a_template_naming_an_undefined_special_token_is_an_error_not_a_panic() {
        // Found by `cargo xtask fuzz --target tokenizer-json`: `tokenizers` read it, then panicked encoding.
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = |single: &str, special: &str| {
            json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
                "pre_tokenizer": null, "decoder": null,
                "post_processor": {"type": "TemplateProcessing", "single": serde_json::from_str::<Value>(single).unwrap(),
                    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": serde_json::from_str::<Value>(special).unwrap()},
                "model": {"type": "WordLevel", "vocab": {"a": 0, "<s>": 1, "<unk>": 2}, "unk_token": "<unk>"}})
            .to_string()
        };
        let load = |text: String| {
            std::fs::write(dir.path().join("tokenizer.json"), text).unwrap();
            TextTokenizer::load(dir.path()).map(|t| t.encode("a").unwrap()).map_err(|e| e.to_string())
        };
        let s = r#"[{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]"#;
        let defined = r#"{"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}"#;
        assert_eq!(load(tokenizer(s, defined)), Ok(vec![1, 0]));
        let err = load(tokenizer(s, "{}")).unwrap_err();
        assert!(
            err.ends_with(
                "key `post_processor`: `single` names the special token \"<s>\", which `special_tokens` lacks"
            )
        );
        let uneven = r#"{"<s>": {"id": "<s>", "ids": [], "tokens": ["<s>"]}}"#;
        assert!(load(tokenizer(s, uneven)).unwrap_err().ends_with("special token \"<s>\" has 0 ids but 1 tokens"));
        let b = r#"[{"Sequence": {"id": "B", "type_id": 0}}]"#;
        assert!(
            load(tokenizer(b, "{}")).unwrap_err().ends_with("`single` names sequence B; a single sequence has only A")
        );
    }
}
