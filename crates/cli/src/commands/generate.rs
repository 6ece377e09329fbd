//! `llmtrain generate --model DIR --prompt TEXT [--chat] [--max-new-tokens N] [sampling flags]`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use llmtrain_core::chat::Message;
use llmtrain_core::generate::{SamplingConfig, generate};
use llmtrain_core::hf;
use llmtrain_core::kernels::Kernels;
use llmtrain_core::tokenizer::TextTokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// An HF checkpoint directory (with tokenizer.json unless --tokenizer or --adapter has one).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA/DoRA adapter directory applied to the model (as `llmtrain logits --adapter`).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Store the decoder's linear weights in NF4 as they load (a QLoRA base).
    #[arg(long)]
    pub load_in_4bit: bool,
    /// With --load-in-4bit: keep one f32 scale per block of 64 instead of double-quantizing them.
    #[arg(long, requires = "load_in_4bit")]
    pub no_double_quant: bool,
    /// Tokenizer directory, when it is neither the adapter's nor the model's.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// The text to continue (with --chat: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user turn with the tokenizer's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate (fewer if an end-of-sequence token comes first).
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
    /// Seed of the sampler (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run<B: Kernels>(args: &Args, device: &B::Device) -> Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.temperature < 0.0 {
        bail!("--temperature must be >= 0, got {}", args.temperature);
    }
    // The model first: a wrong --model is named as such, not as a missing tokenizer.
    let nf4 = args.load_in_4bit.then_some(!args.no_double_quant);
    let (mut model, _) = hf::load_model_with::<B>(&args.model, device, nf4)?;
    if let Some(adapter) = &args.adapter {
        llmtrain_fastlora::load_adapter(&mut model, adapter, device)?;
    }
    // A trained adapter directory carries the tokenizer it was trained with.
    let tokenizer_dir = match (&args.tokenizer, &args.adapter) {
        (Some(dir), _) => dir,
        (None, Some(adapter)) if adapter.join("tokenizer.json").is_file() => adapter,
        _ => &args.model,
    };
    let tokenizer = TextTokenizer::load(tokenizer_dir)?;
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
