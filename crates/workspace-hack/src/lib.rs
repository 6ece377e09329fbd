//! No code: this crate only takes part in feature resolution (see its Cargo.toml).
