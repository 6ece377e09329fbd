//! The fixture tests of LoRA/QLoRA against PEFT and transformers, built as one test binary (one link of burn, not
//! one per file): `peft` (adapters PEFT wrote, saving, attaching, gradients) and `qlora` (a 4-bit base).
//! `cargo test -p llmtrain-fastlora --test fastlora qlora::` runs one module.

mod common;

mod peft;
mod qlora;
