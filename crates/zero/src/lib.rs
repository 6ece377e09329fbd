//! llmtrain-zero — DeepSpeed's role: ZeRO stages 1-3 (sharded optimizer state, gradients and parameters), CPU offload, and ds_config.json.
//!
//! This crate holds no API yet: its issue has not been worked on. See DESIGN.md for where it sits.
