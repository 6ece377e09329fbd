//! The launch config: how many machines and processes a run uses, how its ranks are started and which mixed
//! precision it trains in. `llmtrain config` writes it (asking what `accelerate config` asks) and `llmtrain launch`
//! reads it, like Accelerate's `default_config.yaml`, but in TOML.
//!
//! Here: [`LaunchConfig`] and its errors; the enums of its closed answers ([`DistributedType`], [`Launcher`],
//! [`MixedPrecision`], and the [`Choice`] trait they share); reading and writing the file
//! ([`LaunchConfig::load`], [`LaunchConfig::save`]); and its checks ([`LaunchConfig::validate`], with the checks of
//! single answers such as [`check_address`] that the questionnaire reuses). The questionnaire itself, which talks
//! to the terminal, is the CLI's.

mod choices;
mod file;
mod validate;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use choices::{
    Choice, ComputeEnvironment, DistributedType, Launcher, MixedPrecision, ParseChoiceError, normalize_name,
};
pub use validate::{Origin, check_address, check_gpu_count, check_processes, flag_of, gpu_ids_string, parse_gpu_ids};

/// The file name under the config directory, as Accelerate names its own.
pub const DEFAULT_CONFIG_FILE: &str = "default_config.toml";

/// The port the main process listens on unless told otherwise (torch.distributed's and Accelerate's default).
pub const DEFAULT_MAIN_PROCESS_PORT: u16 = 29500;

/// Everything that can go wrong reading, checking or writing a launch config. Each is one line.
#[derive(Debug, thiserror::Error)]
pub enum LaunchConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}:{line}:{column}: {}{message}", key_prefix(.key))]
    Toml { path: PathBuf, line: usize, column: usize, key: Option<String>, message: String },

    /// A file that parses but describes a launch that cannot work.
    #[error("{path}: {message}")]
    InvalidFile { path: PathBuf, message: String },

    /// A launch that cannot work (see [`LaunchConfig::validate`]).
    #[error("{0}")]
    Invalid(String),

    #[error("cannot write the launch config as TOML: {0}")]
    Serialize(String),

    #[error("no config directory: set LLMTRAIN_CONFIG_DIR, XDG_CONFIG_HOME or HOME, or name the file")]
    NoConfigDir,

    #[error(transparent)]
    Core(#[from] llmtrain_core::CoreError),
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default()
}

type Result<T> = std::result::Result<T, LaunchConfigError>;

/// How a run is launched: written by `llmtrain config`, read by `llmtrain launch`. Fields mirror Accelerate's
/// `default_config.yaml`; absent keys take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchConfig {
    pub distributed_type: DistributedType,
    /// Machines taking part (Accelerate's `num_machines`).
    pub num_machines: usize,
    /// This machine's rank among them, from 0.
    pub machine_rank: usize,
    /// Address of the machine with machine rank 0; needed with several machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_process_ip: Option<String>,
    pub main_process_port: u16,
    /// Processes over all machines, as in Accelerate; each machine runs `num_processes / num_machines`.
    pub num_processes: usize,
    /// `all`, or a comma-separated list of the GPU ids this machine uses.
    pub gpu_ids: String,
    pub mixed_precision: MixedPrecision,
    pub launcher: Launcher,
    /// `mpirun`'s hostfile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostfile: Option<PathBuf>,
}

impl Default for LaunchConfig {
    fn default() -> Self {
        LaunchConfig {
            distributed_type: DistributedType::No,
            num_machines: 1,
            machine_rank: 0,
            main_process_ip: None,
            main_process_port: DEFAULT_MAIN_PROCESS_PORT,
            num_processes: 1,
            gpu_ids: "all".to_string(),
            mixed_precision: MixedPrecision::No,
            launcher: Launcher::InProcess,
            hostfile: None,
        }
    }
}

impl LaunchConfig {
    /// Processes each machine runs.
    pub fn processes_per_machine(&self) -> usize {
        self.num_processes / self.num_machines.max(1)
    }

    /// The GPU ids of `gpu_ids`, or `None` for `all`.
    pub fn gpu_id_list(&self) -> Result<Option<Vec<u32>>> {
        parse_gpu_ids(&self.gpu_ids).map_err(|e| LaunchConfigError::Invalid(format!("gpu_ids: {e}")))
    }
}
