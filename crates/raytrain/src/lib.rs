//! llmtrain-raytrain — Ray Train's role: a driver above the training loop that starts worker groups, watches
//! them, and restarts them from the newest checkpoint when a worker dies.
//!
//! The workers are `llmtrain train` ranks (each runs lightning's Trainer); they talk to each other through MPI
//! or threads, as `llmtrain launch` starts them. The driver adds what Ray Train's controller adds:
//! - [`ScalingSection`] (`[scaling]`, Ray's `ScalingConfig`): `num_workers` (a number, or `[min, max]` for an
//!   elastic group), `use_gpu`, `resources_per_worker`, and how workers start: `launcher` (threads, `mpirun` with
//!   an optional `hostfile`, `srun` inside an allocation).
//! - [`RunSection`] (`[run]`: `name`, `storage_path`) and [`FailureSection`] (`[failure]`: `max_failures`, -1 for
//!   no limit). Checkpoint retention is the Trainer's `[model_checkpoint]`, which takes Ray's `CheckpointConfig`
//!   names too.
//! - [`Driver::fit`]: sizes each group from the slots there are ([`Slots`]), starts it through [`WorkerGroups`]
//!   ([`run_process_group`] for a launcher's processes), and on a failure restarts from the newest intact
//!   checkpoint ([`get_checkpoint`]) with as many workers as can be placed, keeping the global batch by gradient
//!   accumulation. Each restart is logged and recorded; `driver.json` lets a driver started again continue the
//!   run, and [`RunResult`] (`result.json`) is Ray's `Result`.
//! - [`get_context`]: a worker's world rank, local rank, node rank and world size.
//!
//! ```
//! use llmtrain_raytrain::{Driver, FailureSection, GroupExit, GroupSpec, ScalingSection, WorkerGroups};
//!
//! // A group that finishes at once; a real one runs `llmtrain train` ranks.
//! struct Done;
//! impl WorkerGroups for Done {
//!     fn run(&mut self, spec: &GroupSpec) -> llmtrain_raytrain::Result<GroupExit> {
//!         assert_eq!((spec.workers, spec.gradient_accumulation_steps), (2, 1));
//!         Ok(GroupExit::Finished)
//!     }
//! }
//! let dir = tempfile::tempdir().unwrap();
//! let scaling: ScalingSection = toml::from_str("num_workers = 2").unwrap();
//! let failure = FailureSection { max_failures: 1 };
//! let run_dir = dir.path().to_path_buf();
//! let (overwrite, resume_asked, continue_unfinished) = (false, false, true);
//! let driver = Driver { scaling, failure, run_dir, accumulation: 1, overwrite, resume_asked, continue_unfinished };
//! let result = driver.fit(&mut Done, &mut |line| eprintln!("{line}")).unwrap();
//! assert!(result.restarts.is_empty());
//! ```

mod config;
mod context;
mod driver;
mod error;
mod group;
mod placement;
mod result;

pub use config::{FailureSection, NumWorkers, RunSection, ScalingSection};
pub use context::{TrainContext, get_context};
pub use driver::{
    DRIVER_FILE, Driver, DriverState, GroupSpec, LOCK_FILE, Restart, RunLock, Start, WorkerGroups, group_size,
};
pub use error::{RayError, Result};
pub use group::{Exit, GroupExit, WorkerFailure, run_process_group, signal_name};
pub use placement::{Slots, parse_hostfile};
pub use result::{RESULT_FILE, RunResult, Status};

/// The checkpoint a new worker group continues from (Ray's `get_checkpoint()`): the newest intact checkpoint in
/// the run directory, or none for a run that has written none yet.
pub fn get_checkpoint(run_dir: &std::path::Path) -> Result<Option<std::path::PathBuf>> {
    Ok(llmtrain_core::train::checkpoint::latest_valid_checkpoint(run_dir)?.map(|(dir, _)| dir))
}
