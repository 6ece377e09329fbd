//! The run-config sections the driver reads, with Ray Train's names: `[scaling]` (`ScalingConfig`), `[run]`
//! (`RunConfig`'s name and storage path) and `[failure]` (`FailureConfig`). Checkpoint retention is the Trainer's
//! (`[model_checkpoint]`, which also takes Ray's `CheckpointConfig` names).

use std::collections::BTreeMap;
use std::path::PathBuf;

use llmtrain_accel::Launcher;
use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

/// How many workers a group has: a number, or `[min, max]` for an elastic group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumWorkers {
    Fixed(usize),
    Range([usize; 2]),
}

impl NumWorkers {
    /// The fewest workers a group may have.
    pub fn min(self) -> usize {
        match self {
            NumWorkers::Fixed(n) => n,
            NumWorkers::Range([min, _]) => min,
        }
    }

    /// The most workers a group may have; the global batch is the one this many workers read.
    pub fn max(self) -> usize {
        match self {
            NumWorkers::Fixed(n) => n,
            NumWorkers::Range([_, max]) => max,
        }
    }

    pub fn is_elastic(self) -> bool {
        self.min() != self.max()
    }
}

impl std::fmt::Display for NumWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumWorkers::Fixed(n) => write!(f, "{n}"),
            NumWorkers::Range([min, max]) => write!(f, "[{min}, {max}]"),
        }
    }
}

/// `[scaling]`: Ray's `ScalingConfig`, plus how the workers are started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingSection {
    pub num_workers: NumWorkers,
    /// Workers on GPUs (worker k of a machine on its GPU k): the driver's `--device` must be a GPU.
    #[serde(default)]
    pub use_gpu: bool,
    /// What one worker takes of a host's slots (`CPU`, default 1) and GPUs (`GPU`, at most 1).
    #[serde(default)]
    pub resources_per_worker: BTreeMap<String, f64>,
    /// `in-process` (threads of the driver), `mpirun` (with `hostfile`) or `srun` (inside an allocation).
    #[serde(default)]
    pub launcher: Launcher,
    /// Open MPI's hostfile (`host slots=N` lines): where mpirun places the workers, read again at every restart.
    pub hostfile: Option<PathBuf>,
}

impl ScalingSection {
    /// The host slots one worker takes.
    pub fn slots_per_worker(&self) -> usize {
        self.resources_per_worker.get("CPU").map_or(1, |&cpus| cpus.ceil().max(1.0) as usize)
    }
}

impl ConfigSection for ScalingSection {
    const NAME: &'static str = "scaling";

    fn validate(&self) -> Result<(), InvalidKey> {
        let (min, max) = (self.num_workers.min(), self.num_workers.max());
        if min == 0 {
            return Err(InvalidKey::new("num_workers", "must be at least 1"));
        }
        if min > max {
            return Err(InvalidKey::new("num_workers", format!("[{min}, {max}]: the minimum is above the maximum")));
        }
        if self.hostfile.is_some() && self.launcher != Launcher::Mpirun {
            return Err(InvalidKey::new(
                "hostfile",
                format!("is read by the mpirun launcher, not by launcher \"{}\"", self.launcher),
            ));
        }
        if self.launcher == Launcher::InProcess && self.num_workers.is_elastic() {
            return Err(InvalidKey::new(
                "num_workers",
                "a range needs launcher \"mpirun\" or \"srun\": in-process workers are threads of one machine, \
                 whose slots do not come and go",
            ));
        }
        for (resource, &amount) in &self.resources_per_worker {
            let key = format!("resources_per_worker.{resource}");
            match resource.as_str() {
                "CPU" if amount.is_finite() && amount > 0.0 => {}
                "GPU" if amount == 0.0 || amount == 1.0 => {}
                "CPU" => return Err(InvalidKey::new(&key, "must be a positive number")),
                "GPU" => return Err(InvalidKey::new(&key, "must be 0 or 1: a worker drives at most one GPU")),
                _ => return Err(InvalidKey::new(&key, "unknown resource; supported: CPU, GPU")),
            }
        }
        if self.resources_per_worker.get("GPU").is_some_and(|&gpus| gpus > 0.0) && !self.use_gpu {
            return Err(InvalidKey::new("resources_per_worker.GPU", "asks for a GPU but use_gpu is false"));
        }
        Ok(())
    }
}

/// `[run]`: where the run's results go (`storage_path/name/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub name: String,
    /// Default: the directory above `[output] dir`.
    pub storage_path: Option<PathBuf>,
}

impl ConfigSection for RunSection {
    const NAME: &'static str = "run";

    fn validate(&self) -> Result<(), InvalidKey> {
        let plain = !self.name.is_empty()
            && self.name != "."
            && self.name != ".."
            && !self.name.contains(['/', '\\'])
            && !self.name.chars().any(char::is_control);
        if !plain {
            return Err(InvalidKey::new("name", format!("{:?} is not a directory name", self.name)));
        }
        Ok(())
    }
}

/// `[failure]`: Ray's `FailureConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureSection {
    /// Worker-group failures the run survives by restarting; -1: any number, 0: none.
    #[serde(default)]
    pub max_failures: i64,
}

impl ConfigSection for FailureSection {
    const NAME: &'static str = "failure";

    fn validate(&self) -> Result<(), InvalidKey> {
        if self.max_failures < -1 {
            return Err(InvalidKey::new("max_failures", "must be -1 (no limit), 0 or more"));
        }
        Ok(())
    }
}

impl FailureSection {
    /// Whether a run that has restarted `restarts` times may restart once more.
    pub fn allows(&self, restarts: usize) -> bool {
        self.max_failures < 0 || (restarts as i64) < self.max_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(text: &str) -> Result<ScalingSection, String> {
        let section: ScalingSection = toml::from_str(text).map_err(|e| e.to_string())?;
        section.validate().map_err(|e| format!("{}: {}", e.key, e.message))?;
        Ok(section)
    }

    #[test]
    fn num_workers_is_a_number_or_a_range() {
        let fixed = scaling("num_workers = 2\nlauncher = \"mpirun\"").unwrap();
        assert_eq!((fixed.num_workers.min(), fixed.num_workers.max()), (2, 2));
        let range = scaling("num_workers = [1, 3]\nlauncher = \"mpirun\"\nhostfile = \"h\"").unwrap();
        assert_eq!((range.num_workers.min(), range.num_workers.max()), (1, 3));
        assert!(range.num_workers.is_elastic());
        assert_eq!(
            scaling("num_workers = [3, 1]\nlauncher = \"srun\"").unwrap_err(),
            "num_workers: [3, 1]: the minimum is above the maximum"
        );
        assert_eq!(scaling("num_workers = 0").unwrap_err(), "num_workers: must be at least 1");
        assert!(scaling("num_workers = [1, 2]").unwrap_err().contains("needs launcher"));
        assert!(scaling("num_workers = 2\nhostfile = \"h\"").unwrap_err().contains("mpirun launcher"));
    }

    #[test]
    fn resources_per_worker_take_cpu_slots_and_at_most_one_gpu() {
        let two = scaling("num_workers = 2\nresources_per_worker = { CPU = 2 }").unwrap();
        assert_eq!(two.slots_per_worker(), 2);
        assert!(scaling("num_workers = 2\nresources_per_worker = { TPU = 1 }").unwrap_err().contains("unknown"));
        assert!(scaling("num_workers = 2\nresources_per_worker = { GPU = 1 }").unwrap_err().contains("use_gpu"));
        assert!(scaling("num_workers = 2\nuse_gpu = true\nresources_per_worker = { GPU = 2 }").is_err());
    }

    #[test]
    fn failures_allowed() {
        assert!(!FailureSection { max_failures: 0 }.allows(0));
        assert!(FailureSection { max_failures: 1 }.allows(0));
        assert!(!FailureSection { max_failures: 1 }.allows(1));
        assert!(FailureSection { max_failures: -1 }.allows(1000));
    }

    #[test]
    fn run_names_are_plain_directory_names() {
        assert!(RunSection { name: "demo-1".into(), storage_path: None }.validate().is_ok());
        for bad in ["", "..", "a/b"] {
            assert!(RunSection { name: bad.into(), storage_path: None }.validate().is_err(), "{bad}");
        }
    }
}
