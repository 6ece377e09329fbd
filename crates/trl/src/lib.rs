//! llmtrain-trl — TRL's role: SFT, reward models, DPO and its variants, PPO, GRPO, KTO and ORPO.
//!
//! This crate holds no API yet: its issue has not been worked on. See DESIGN.md for where it sits.
