//! llmtrain-fastlora — Unsloth's and PEFT's role: LoRA, rsLoRA, DoRA and QLoRA with PEFT-compatible adapter files and an exact fused fast path. Arrives with issue 6.
//!
//! This crate holds no API yet: its issue has not been worked on. See DESIGN.md for where it sits.
