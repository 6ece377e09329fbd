//! Training building blocks. So far: the causal-LM loss (the loop, optimizer and checkpoints come with issue 3).

mod loss;

pub use loss::{IGNORE_INDEX, causal_lm_loss};
