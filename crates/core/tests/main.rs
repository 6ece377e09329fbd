//! llmtrain-core's integration tests, built as one test binary: each module is one concern
//! (`cargo test -p llmtrain-core --test core parity::` runs one). `fused_ops.rs` (it counts allocations) and
//! `mpi.rs` (mpi feature) are test targets of their own.

mod bad_checkpoints;
mod chat_templates;
mod common;
mod data_formats;
mod data_loader;
mod data_masks;
mod flash_attention;
mod fused_loss;
mod nf4_weight;
mod optimizer;
mod padded_forward;
mod parity;
