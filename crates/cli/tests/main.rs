//! The end-to-end tests of the `llmtrain` binary, built as one test binary (one link, not one per file). Each
//! module holds one command's or one concern's tests, so a test's name says what it covers
//! (`train::ctrl_c_checkpoints_the_current_step_and_resume_ends_identical`); `cargo test -p llmtrain-cli --test e2e
//! train::` runs one module. `launch_mpi.rs` is a test target of its own, built only with the `mpi` feature.

mod common;
mod launch_common;

mod config;
mod estimate_memory;
mod inspect;
mod launch;
mod lora;
mod messages;
mod online;
mod raytrain;
mod recommend;
mod shipped_configs;
mod train;
mod trl;
mod zero;
