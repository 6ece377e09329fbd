//! llmtrain-memopt — The memory techniques: gradient checkpointing, mixed precision, NF4 4-bit quantization, memory-efficient attention, gradient accumulation, and a memory estimator. Arrives with issue 5.
//!
//! This crate holds no API yet: its issue has not been worked on. See DESIGN.md for where it sits.
