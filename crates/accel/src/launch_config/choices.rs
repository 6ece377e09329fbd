//! The closed sets of answers a launch config holds (machine type, launcher, precision): their TOML and
//! command-line names, and the labels the questionnaire of `llmtrain config` lists them by.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is not one of an enum's choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{found}`; expected one of: {expected}")]
pub struct ParseChoiceError {
    pub what: &'static str,
    pub found: String,
    pub expected: String,
}

/// The closed sets of answers (machine type, launcher, precision): their TOML names and questionnaire labels.
pub trait Choice: Copy + PartialEq + 'static {
    /// What the set is, as an error names it (`distributed type`).
    const WHAT: &'static str;
    /// Every choice, in the order the questionnaire numbers them.
    const ALL: &'static [Self];
    /// The serde / command-line name.
    fn name(self) -> &'static str;
    /// How the questionnaire lists it.
    fn label(self) -> &'static str;
}

/// Lower case with `_` as `-`, so `MULTI_GPU` (Accelerate's spelling) and `multi-gpu` are the same answer: the
/// form names, labels and answers are compared in.
pub fn normalize_name(s: &str) -> String {
    s.trim().to_lowercase().replace('_', "-")
}

fn parse_choice<T: Choice>(s: &str) -> std::result::Result<T, ParseChoiceError> {
    let wanted = normalize_name(s);
    T::ALL.iter().copied().find(|c| normalize_name(c.name()) == wanted).ok_or_else(|| ParseChoiceError {
        what: T::WHAT,
        found: s.to_string(),
        expected: T::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
    })
}

macro_rules! choice_traits {
    ($ty:ty) => {
        impl FromStr for $ty {
            type Err = ParseChoiceError;
            fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
                parse_choice(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

/// Which kind of distributed training runs (Accelerate's `distributed_type`, for the machines llmtrain supports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DistributedType {
    /// One process, no distributed training.
    #[default]
    No,
    /// Data parallel over CPU processes.
    MultiCpu,
    /// Data parallel over GPUs, one process (rank) per GPU.
    MultiGpu,
}

impl Choice for DistributedType {
    const WHAT: &'static str = "distributed type";
    const ALL: &'static [Self] = &[Self::No, Self::MultiCpu, Self::MultiGpu];
    fn name(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::MultiCpu => "multi-cpu",
            Self::MultiGpu => "multi-gpu",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::No => "No distributed training",
            Self::MultiCpu => "multi-CPU",
            Self::MultiGpu => "multi-GPU",
        }
    }
}
choice_traits!(DistributedType);

impl DistributedType {
    /// The type `accelerate config` / `accelerate launch` infer when none is given: data parallel as soon as
    /// there is more than one process or machine, over GPUs when `gpu` (a GPU build or a GPU device asked for),
    /// else over CPU processes; `No` for one process on one machine.
    pub fn inferred(num_processes: usize, num_machines: usize, gpu: bool) -> Self {
        match (num_processes > 1 || num_machines > 1, gpu) {
            (false, _) => DistributedType::No,
            (true, true) => DistributedType::MultiGpu,
            (true, false) => DistributedType::MultiCpu,
        }
    }
}

// The precision of the forward and backward passes lives in core (the run config's `[memopt]` names it too).
pub use llmtrain_core::config::MixedPrecision;

impl Choice for MixedPrecision {
    const WHAT: &'static str = "mixed precision";
    const ALL: &'static [Self] = MixedPrecision::ALL;
    fn name(self) -> &'static str {
        MixedPrecision::name(self)
    }
    fn label(self) -> &'static str {
        MixedPrecision::name(self)
    }
}

/// How the ranks are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Launcher {
    /// Threads of one process on this machine; needs no external tool.
    #[default]
    InProcess,
    /// Open MPI's `mpirun` starts one process per rank (on the hosts of its hostfile).
    Mpirun,
    /// Slurm's `srun` starts one process per rank inside an allocation.
    Srun,
}

impl Choice for Launcher {
    const WHAT: &'static str = "launcher";
    const ALL: &'static [Self] = &[Self::InProcess, Self::Mpirun, Self::Srun];
    fn name(self) -> &'static str {
        match self {
            Self::InProcess => "in-process",
            Self::Mpirun => "mpirun",
            Self::Srun => "srun",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::InProcess => "in-process (threads of one process, on this machine only)",
            Self::Mpirun => "mpirun (Open MPI starts one process per rank)",
            Self::Srun => "srun (Slurm starts one process per rank)",
        }
    }
}
choice_traits!(Launcher);

/// Accelerate's first question; llmtrain knows only one answer, asked for so the questionnaire reads the same.
/// No launch config key holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeEnvironment {
    /// Accelerate's `LOCAL_MACHINE`.
    ThisMachine,
}

impl Choice for ComputeEnvironment {
    const WHAT: &'static str = "compute environment";
    const ALL: &'static [Self] = &[Self::ThisMachine];
    fn name(self) -> &'static str {
        // Accelerate's LOCAL_MACHINE, normalized.
        "local-machine"
    }
    fn label(self) -> &'static str {
        "This machine"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_one_process_or_machine_infers_data_parallel() {
        assert_eq!(DistributedType::inferred(1, 1, false), DistributedType::No);
        assert_eq!(DistributedType::inferred(1, 1, true), DistributedType::No);
        assert_eq!(DistributedType::inferred(2, 1, false), DistributedType::MultiCpu);
        assert_eq!(DistributedType::inferred(1, 2, false), DistributedType::MultiCpu);
        assert_eq!(DistributedType::inferred(4, 2, true), DistributedType::MultiGpu);
    }

    #[test]
    fn choices_parse_and_display_their_names() {
        for t in DistributedType::ALL {
            assert_eq!(t.to_string().parse::<DistributedType>().unwrap(), *t);
        }
        for m in MixedPrecision::ALL {
            assert_eq!(m.to_string().parse::<MixedPrecision>().unwrap(), *m);
        }
        for l in Launcher::ALL {
            assert_eq!(l.to_string().parse::<Launcher>().unwrap(), *l);
        }
        assert_eq!("MULTI_GPU".parse::<DistributedType>().unwrap(), DistributedType::MultiGpu);
        let err = "fp8".parse::<MixedPrecision>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown mixed precision `fp8`; expected one of: no, 32-true, fp16, 16-mixed, bf16, bf16-mixed"
        );
        assert_eq!("bf16-mixed".parse::<MixedPrecision>().unwrap(), MixedPrecision::Bf16, "Lightning's name");
    }
}
