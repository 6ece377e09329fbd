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
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| CoreError::Tokenizer { path: path.clone(), message: e.to_string() })?;
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
}
