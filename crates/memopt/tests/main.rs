//! llmtrain-memopt's integration tests, built as one test binary
//! (`cargo test -p llmtrain-memopt --test memopt checkpointing::` runs one module).

mod checkpointing;
mod nf4_bitsandbytes;
