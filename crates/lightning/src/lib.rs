//! llmtrain-lightning — PyTorch Lightning's role: a LightningModule-style trait, a Trainer, callbacks and loggers.
//!
//! This crate holds no API yet: its issue has not been worked on. See DESIGN.md for where it sits.
