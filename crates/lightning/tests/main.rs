//! The engine's integration tests, built as one test binary: each module is one concern
//! (`cargo test -p llmtrain-lightning --test lightning parity::` runs one).

mod common;
mod example;
mod fused_loss;
mod mixed_precision;
mod new_objective;
mod parity;
