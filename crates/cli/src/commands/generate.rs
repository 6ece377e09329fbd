//! `llmtrain generate --model DIR --prompt TEXT [--chat] [--max-new-tokens N] [sampling flags]`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use llmtrain_core::chat::Message;
use llmtrain_core::generate::{SamplingConfig, generate};
use llmtrain_core::hf;
use llmtrain_core::tokenizer::TextTokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// An HF checkpoint directory with tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Tokenizer directory, when it is not the model's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user turn with the tokenizer's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1.0 = off.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.temperature < 0.0 {
        bail!("--temperature must be >= 0, got {}", args.temperature);
    }
    let tokenizer = TextTokenizer::load(args.tokenizer.as_ref().unwrap_or(&args.model))?;
    let (model, _) = hf::load_model::<B>(&args.model, device)?;
    if tokenizer.vocab_size() > model.config.vocab_size {
        bail!(
            "tokenizer has {} tokens but {} has vocab_size {}: they do not belong together",
            tokenizer.vocab_size(),
            args.model.join("config.json").display(),
            model.config.vocab_size
        );
    }
    let prompt = if args.chat {
        // As transformers: the rendered template carries its own special tokens.
        let text = tokenizer.apply_chat_template(&[Message::new("user", &args.prompt)], true)?;
        tokenizer.encode_with(&text, false)?
    } else {
        tokenizer.encode(&args.prompt)?
    };
    if prompt.is_empty() {
        bail!("--prompt encodes to no tokens");
    }
    let mut stop_tokens = model.config.eos_token_ids.clone();
    stop_tokens.extend(tokenizer.eos_token_id());
    let config = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_new_tokens,
        stop_tokens,
    };
    let new_tokens = generate(&model, &prompt, &config, device);
    let text = tokenizer.decode(&new_tokens, true)?;
    let mut stdout = std::io::stdout().lock();
    if args.chat {
        writeln!(stdout, "{text}")?;
    } else {
        writeln!(stdout, "{}{text}", args.prompt)?;
    }
    Ok(())
}
