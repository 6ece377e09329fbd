//! `cargo xtask <task>`: developer tasks that are not part of the `llmtrain` binary.
//!
//! - `backends`: forward+backward time of the model on the default CPU backend (NdArray, or NdArray over OpenBLAS
//!   with `--features openblas`) and, with `--features flex`, on burn's Flex, on DESIGN.md's `full-tiny` shape.

mod backends;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Compare CPU backends on the model's forward and backward.
    Backends(backends::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Backends(args) => backends::run(&args),
    }
}
