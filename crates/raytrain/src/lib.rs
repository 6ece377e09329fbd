//! llmtrain-raytrain — Ray Train's role: scaling, run and failure configuration, worker groups and fault tolerance.
//!
//! This crate holds no API yet: its issue has not been worked on. See DESIGN.md for where it sits.
