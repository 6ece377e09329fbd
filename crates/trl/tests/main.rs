//! llmtrain-trl's integration tests, one binary: each module is one concern.

mod common;
mod dpo;
mod kto;
mod online;
mod orpo;
mod ppo;
mod reward;
