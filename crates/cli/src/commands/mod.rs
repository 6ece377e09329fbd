//! One module per subcommand.

pub mod convert;
pub mod generate;
pub mod logits;
pub mod tokenizer;
pub mod train;
