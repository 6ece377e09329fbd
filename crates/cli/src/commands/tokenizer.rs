//! `llmtrain tokenizer train --files ... --vocab-size N --out DIR` and `llmtrain tokenizer encode`.

use std::path::PathBuf;

use anyhow::Result;
use llmtrain_core::chat::Message;
use llmtrain_core::fsutil::OutputKind;
use llmtrain_core::tokenizer::{BpeTrainingOptions, TextTokenizer, train_bpe_to_dir};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a byte-level BPE tokenizer on text files; writes tokenizer.json and tokenizer_config.json.
    Train {
        /// Text files to learn from; a directory stands for the files in it (as in run configs).
        #[arg(long, num_args = 1.., required = true)]
        files: Vec<PathBuf>,
        /// Tokens in the vocabulary, the 256 bytes and the special tokens included.
        #[arg(long)]
        vocab_size: usize,
        /// Fewest occurrences of a pair before it is merged.
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// The directory to write tokenizer.json and tokenizer_config.json into (new, empty, or a tokenizer's).
        #[arg(long)]
        out: PathBuf,
        /// Replace --out even if it holds other files than a tokenizer's.
        #[arg(long)]
        overwrite: bool,
    },
    /// Print the token ids of a text (with the tokenizer's special tokens), or of a chat turn with --chat.
    Encode {
        /// Directory holding tokenizer.json (and tokenizer_config.json).
        #[arg(long)]
        tokenizer: PathBuf,
        /// The text to encode.
        #[arg(long)]
        text: String,
        /// Render the text as a user turn with the chat template (add_generation_prompt) first.
        #[arg(long)]
        chat: bool,
    },
}

pub fn run(command: &Command) -> Result<()> {
    match command {
        Command::Train { files, vocab_size, min_frequency, out, overwrite } => {
            llmtrain_core::fsutil::check_replaceable_dir(out, "--out", OutputKind::Tokenizer, *overwrite)?;
            let options = BpeTrainingOptions { vocab_size: *vocab_size, min_frequency: *min_frequency };
            let files = llmtrain_core::setup::expand_files(files)?;
            let tok = train_bpe_to_dir(&files, &options, out)?;
            println!("trained a {}-token byte-level BPE tokenizer into {}", tok.vocab_size(), out.display());
            Ok(())
        }
        Command::Encode { tokenizer, text, chat } => {
            let tok = TextTokenizer::load(tokenizer)?;
            let ids = if *chat {
                let rendered = tok.apply_chat_template(&[Message::new("user", text)], true)?;
                tok.encode_with(&rendered, false)?
            } else {
                tok.encode(text)?
            };
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            println!("{}", ids.join(","));
            Ok(())
        }
    }
}
