//! One module per subcommand.

pub mod config;
pub mod convert;
pub mod driver;
pub mod estimate_memory;
pub mod generate;
pub mod launch;
pub mod logits;
pub mod merge;
pub mod model_size;
pub mod recommend;
pub mod score;
pub mod tokenizer;
pub mod train;
pub mod zero_to_hf;
