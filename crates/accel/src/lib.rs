//! llmtrain-accel — Accelerate's role: one Accelerator that runs the same training loop on one CPU, several devices or several processes (data parallel, config and launch). Arrives with issue 4.
//!
//! This crate holds no API yet: its issue has not been worked on. See DESIGN.md for where it sits.
