//! The driver (Ray Train's controller): it sizes a worker group from the slots there are, starts it, and when a
//! worker fails it starts a new group that resumes from the newest intact checkpoint, up to `max_failures` times.
//! An elastic group (`num_workers = [min, max]`) is sized again at every start, and keeps the global batch of
//! `max` workers by gradient accumulation. Its record (`driver.json`) lets a driver started again on the same
//! run directory continue the run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use llmtrain_core::fsutil::write_atomic;
use llmtrain_core::train::checkpoint::latest_valid_checkpoint;
use llmtrain_core::train::metrics::MetricsLog;
use serde::{Deserialize, Serialize};

use llmtrain_core::train::clear_previous_run;
use llmtrain_lightning::loggers::RUN_OUTPUTS;

use crate::config::{FailureSection, NumWorkers, ScalingSection};
use crate::error::{RayError, Result};
use crate::group::{GroupExit, WorkerFailure};
use crate::placement::Slots;
use crate::result::{METRICS_FILE, RunResult, last_step};

/// The driver's record of a run, in the run directory.
pub const DRIVER_FILE: &str = "driver.json";

/// The lock a driver holds on its run directory.
pub const LOCK_FILE: &str = "driver.lock";

/// Held while a driver runs its run (see [`Driver::lock`]).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// How a group starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// As the command line asked (a new run, or `--resume` / `--overwrite` given to the driver).
    AsAsked,
    /// From this checkpoint of the run.
    Resume(PathBuf),
    /// From the beginning, replacing what an earlier group of this run wrote before its first checkpoint.
    Over,
}

/// One group to start.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// 1 for the first group of this driver, then 2, 3, ...
    pub attempt: usize,
    pub workers: usize,
    /// Machines the workers span (srun's `--nodes`).
    pub machines: usize,
    /// Micro-batches per optimizer step on each worker, so that the global batch stays that of the most workers.
    pub gradient_accumulation_steps: usize,
    pub start: Start,
}

/// Starts worker groups and waits for each to end: processes under a launcher, or threads of the driver.
pub trait WorkerGroups {
    fn run(&mut self, spec: &GroupSpec) -> Result<GroupExit>;
}

/// One restart: why, from where, with how many workers, and how long until the new group had trained a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    /// The failed worker's rank, when the launcher named it.
    pub worker_rank: Option<usize>,
    pub node: Option<String>,
    /// `signal 9 (SIGKILL)`, `code 1`, or a thread's error.
    pub exit: String,
    /// The checkpoint the new group resumed from (none: it started over).
    pub resumed_from: Option<PathBuf>,
    pub resumed_step: u64,
    pub workers: usize,
    pub gradient_accumulation_steps: usize,
    /// Seconds from the failure until the new group logged its first step (with `logging_steps = 1`; else until
    /// its first record).
    pub seconds_to_first_step: Option<f64>,
}

/// What `driver.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DriverState {
    pub finished: bool,
    /// The run started new under a driver (not resumed from elsewhere): with no checkpoint yet, a restart may
    /// start it over.
    #[serde(default)]
    pub fresh: bool,
    pub restarts: Vec<Restart>,
}

/// The driver of one run.
#[derive(Debug, Clone)]
pub struct Driver {
    pub scaling: ScalingSection,
    pub failure: FailureSection,
    /// Where the workers write (`storage_path/name/`, or the run's output directory).
    pub run_dir: PathBuf,
    /// `[training] gradient_accumulation_steps`: the accumulation of a group of the most workers.
    pub accumulation: usize,
    /// Start over (`--overwrite`): the earlier run in the run directory, and the driver's record of it, are
    /// deleted before the first group starts.
    pub overwrite: bool,
    /// The command line asked to resume (`--resume`): without a checkpoint in the run directory, a restart asks
    /// the same again instead of starting over.
    pub resume_asked: bool,
    /// An unfinished run an earlier driver left continues from its newest checkpoint (not when the command line
    /// names the checkpoint to resume from).
    pub continue_unfinished: bool,
}

impl Driver {
    /// Checks the run directory can be written (creating it), before anything starts.
    pub fn prepare_storage(&self) -> Result<()> {
        let storage = |source| RayError::Storage { path: self.run_dir.clone(), source };
        std::fs::create_dir_all(&self.run_dir).map_err(storage)?;
        let probe = self.run_dir.join(".raytrain-write-check");
        std::fs::write(&probe, b"").map_err(storage)?;
        std::fs::remove_file(&probe).map_err(storage)
    }

    /// Refuses, before anything starts, a run directory that holds a run no driver left unfinished, unless the
    /// command line says what to do with it (`--resume` or `--overwrite`): a restart must not continue a run the
    /// user did not ask to continue.
    pub fn check_run_dir(&self) -> Result<()> {
        if self.resume_asked || self.overwrite {
            return Ok(());
        }
        let unfinished = self.state()?.is_some_and(|state| !state.finished);
        let mut earlier = llmtrain_core::train::earlier_run_contents(&self.run_dir, RUN_OUTPUTS)?;
        if self.run_dir.join(crate::result::RESULT_FILE).is_file() {
            earlier.push(crate::result::RESULT_FILE.to_string());
        }
        if unfinished || earlier.is_empty() {
            return Ok(());
        }
        Err(RayError::EarlierRun { dir: self.run_dir.clone(), contents: llmtrain_core::fsutil::shorten(&earlier, 4) })
    }

    /// Takes the run directory for this driver (an exclusive `flock` on `driver.lock`), so that no second driver
    /// runs the same run at once. The lock is inherited by the worker groups' launchers, so it is held until the
    /// last of them is gone even if the driver is killed.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.run_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| llmtrain_core::error::CoreError::io(&path, e))?;
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: flock and fcntl on a descriptor this function owns.
        let locked = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            return Err(RayError::Locked { path });
        }
        // SAFETY: as above; clearing close-on-exec lets the launchers inherit the lock.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        Ok(RunLock { _file: file })
    }

    /// The record a driver left in the run directory, if any.
    pub fn state(&self) -> Result<Option<DriverState>> {
        let path = self.run_dir.join(DRIVER_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| llmtrain_core::error::CoreError::json(&path, &e).into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(llmtrain_core::error::CoreError::io(&path, e).into()),
        }
    }

    /// The size of the next group: as many workers as the slots place, up to the most asked for, and at least the
    /// fewest; the accumulation that keeps the global batch.
    pub fn size_group(&self) -> Result<(usize, usize, usize)> {
        let slots = Slots::find(self.scaling.launcher, self.scaling.hostfile.as_deref())?;
        let placeable = slots.workers(self.scaling.slots_per_worker());
        let (workers, accumulation) = group_size(self.scaling.num_workers, self.accumulation, placeable, &slots)?;
        Ok((workers, accumulation, slots.machines(workers)))
    }

    /// Runs the run to its end through `groups`: the first group starts as the command line asked (or continues
    /// a run an earlier driver left unfinished), and every failure the `[failure]` section allows costs a restart
    /// from the newest intact checkpoint. `log` hears each restart.
    pub fn fit(&self, groups: &mut dyn WorkerGroups, log: &mut dyn FnMut(&str)) -> Result<RunResult> {
        let mut state = self.state()?.unwrap_or_default();
        let mut start = Start::AsAsked;
        if self.overwrite {
            // The earlier run goes before any group starts, so no restart can continue it.
            clear_previous_run(&self.run_dir, RUN_OUTPUTS)?;
            for file in [crate::result::RESULT_FILE, DRIVER_FILE] {
                let _ = std::fs::remove_file(self.run_dir.join(file));
            }
            state = DriverState { fresh: true, ..DriverState::default() };
        } else if self.continue_unfinished && !state.finished && self.run_dir.join(DRIVER_FILE).is_file() {
            // An earlier driver of this run stopped before it ended: continue it as a restart would.
            start = self.restart_point(&state)?.0;
            if let Start::Resume(dir) = &start {
                log(&format!("raytrain: continuing the run in {} from {}", self.run_dir.display(), dir.display()));
            }
        } else {
            // A new run (or one the command line says how to resume): only a new run may start over.
            state = DriverState { fresh: !self.resume_asked, restarts: state.restarts, ..DriverState::default() };
        }
        state.finished = false;
        let started = Instant::now();
        let mut failed_at: Option<Instant> = None;
        // This driver's restarts: what `max_failures` counts (the record keeps earlier drivers' too).
        let mut restarts = 0;
        let mut size = self.size_group()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (workers, accumulation, machines) = size;
            let spec = GroupSpec { attempt, workers, machines, gradient_accumulation_steps: accumulation, start };
            self.save_state(&state)?;
            let resumed_step = match &spec.start {
                Start::Resume(dir) => {
                    let step = llmtrain_core::train::checkpoint::verify_checkpoint(dir)?.step;
                    // The records past the checkpoint, as the resumed Trainer will keep them: the watch below then
                    // sees the new group's first step, not the failed group's last.
                    drop(MetricsLog::open(&self.run_dir, Some(step))?);
                    step
                }
                _ => 0,
            };
            // A restart's cost counts from the failure to the new group's first step.
            let first_step = failed_at
                .take()
                .map(|since| FirstStepWatch::start(self.run_dir.join(METRICS_FILE), resumed_step, since));
            let exit = groups.run(&spec);
            if let (Some(watch), Some(restart)) = (first_step, state.restarts.last_mut()) {
                restart.seconds_to_first_step = watch.stop();
            }
            let failure = match exit? {
                GroupExit::Finished => break,
                GroupExit::Interrupted(signal) => {
                    self.save_state(&state)?;
                    return Ok(RunResult::interrupted(&self.run_dir, state.restarts, signal));
                }
                GroupExit::Failed(failure) => failure,
            };
            failed_at = Some(Instant::now());
            // What the next group would be; a failure to find out ends the run like a failure with no restart left.
            let next = self.restart_point(&state).and_then(|point| Ok((point, self.size_group()?)));
            let (Ok(((next, from_step), next_size)), true) = (&next, self.failure.allows(restarts)) else {
                let err = match next {
                    Err(err) if self.failure.allows(restarts) => {
                        RayError::Launch(format!("{failure}; no restart: {err}"))
                    }
                    _ => RayError::WorkerFailed { failure, max_failures: self.failure.max_failures, restarts },
                };
                self.save_state(&state)?;
                RunResult::failed(&self.run_dir, state.restarts, &err.to_string(), started)?.write()?;
                return Err(err);
            };
            restarts += 1;
            let (next, from_step, next_size) = (next.clone(), *from_step, *next_size);
            log(&restart_line(&failure, &next, restarts, &self.failure, next_size.0));
            state.restarts.push(Restart {
                worker_rank: failure.rank,
                node: failure.node.clone(),
                exit: failure.exit_text(),
                resumed_from: match &next {
                    Start::Resume(dir) => Some(dir.clone()),
                    _ => None,
                },
                resumed_step: from_step,
                workers: next_size.0,
                gradient_accumulation_steps: next_size.1,
                seconds_to_first_step: None,
            });
            (start, size) = (next, next_size);
        }
        state.finished = true;
        self.save_state(&state)?;
        let result = RunResult::finished(&self.run_dir, state.restarts, started)?;
        result.write()?;
        Ok(result)
    }

    /// Where a new group continues: the newest intact checkpoint; else from the beginning for a run this driver
    /// started new, or as the command line asked (its `--resume`) for one it did not.
    fn restart_point(&self, state: &DriverState) -> Result<(Start, u64)> {
        Ok(match latest_valid_checkpoint(&self.run_dir)? {
            Some((dir, checkpoint)) => (Start::Resume(dir), checkpoint.step),
            None if state.fresh => (Start::Over, 0),
            None => (Start::AsAsked, 0),
        })
    }

    fn save_state(&self, state: &DriverState) -> Result<()> {
        let text = serde_json::to_vec_pretty(state).map_err(|e| RayError::Launch(e.to_string()))?;
        Ok(write_atomic(&self.run_dir.join(DRIVER_FILE), &text)?)
    }
}

/// The workers of a group and their accumulation: the most of `[min, max]` that `placeable` allows and that
/// divides the global batch of `max` workers accumulating `accumulation` micro-batches.
pub fn group_size(
    asked: NumWorkers,
    accumulation: usize,
    placeable: Option<usize>,
    slots: &Slots,
) -> Result<(usize, usize)> {
    let most = placeable.unwrap_or(asked.max()).min(asked.max());
    if most < asked.min() {
        let needed = asked.min();
        return Err(RayError::TooFewSlots { asked, needed, slots: most, place: slots.describe() });
    }
    let micro_batches = asked.max().saturating_mul(accumulation.max(1));
    (asked.min()..=most)
        .rev()
        .find(|workers| micro_batches.is_multiple_of(*workers))
        .map(|workers| (workers, micro_batches / workers))
        .ok_or(RayError::NoEvenSplit { asked, accumulation, placeable: most })
}

fn restart_line(failure: &WorkerFailure, next: &Start, count: usize, limit: &FailureSection, workers: usize) -> String {
    let of = match limit.max_failures {
        n if n < 0 => String::new(),
        n => format!(" of {n}"),
    };
    let from = match next {
        Start::Resume(dir) => format!("from {}", dir.file_name().map_or(dir.as_path(), Path::new).display()),
        _ => "from the beginning (no checkpoint yet)".to_string(),
    };
    format!("raytrain: {failure}; restart {count}{of} {from} with {workers} worker(s)")
}

/// Watches the metrics file for the first record past `step`, and says how long it took.
struct FirstStepWatch {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<f64>>,
}

impl FirstStepWatch {
    fn start(metrics: PathBuf, step: u64, since: Instant) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if last_step(&metrics).is_some_and(|logged| logged > step) {
                    return Some(since.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        });
        Self { done, thread }
    }

    fn stop(self) -> Option<f64> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::Exit;

    fn size(asked: NumWorkers, accumulation: usize, placeable: Option<usize>) -> Result<(usize, usize)> {
        group_size(asked, accumulation, placeable, &Slots::Unbounded)
    }

    #[test]
    fn an_elastic_group_keeps_the_global_batch() {
        assert_eq!(size(NumWorkers::Range([1, 2]), 1, Some(2)).unwrap(), (2, 1));
        assert_eq!(size(NumWorkers::Range([1, 2]), 1, Some(1)).unwrap(), (1, 2));
        assert_eq!(size(NumWorkers::Range([1, 4]), 2, Some(3)).unwrap(), (2, 4));
        assert_eq!(size(NumWorkers::Range([2, 4]), 1, None).unwrap(), (4, 1));
        assert!(matches!(size(NumWorkers::Range([3, 4]), 1, Some(3)), Err(RayError::NoEvenSplit { .. })));
        let err = size(NumWorkers::Fixed(4), 1, Some(2)).unwrap_err();
        assert_eq!(err.to_string(), "[scaling] num_workers = 4 needs 4 worker(s), but this machine places 2");
    }

    /// Groups that fail as scripted, recording what they were asked to start.
    struct Scripted {
        exits: Vec<GroupExit>,
        started: Vec<GroupSpec>,
    }

    impl WorkerGroups for Scripted {
        fn run(&mut self, spec: &GroupSpec) -> Result<GroupExit> {
            self.started.push(spec.clone());
            Ok(self.exits.remove(0))
        }
    }

    fn driver(dir: &Path, max_failures: i64) -> Driver {
        let scaling: ScalingSection = serde_json::from_str(r#"{"num_workers": 2}"#).unwrap();
        Driver {
            scaling,
            failure: FailureSection { max_failures },
            run_dir: dir.to_path_buf(),
            accumulation: 1,
            overwrite: false,
            resume_asked: false,
            continue_unfinished: true,
        }
    }

    fn killed() -> GroupExit {
        GroupExit::Failed(WorkerFailure { rank: Some(1), node: None, how: Exit::Signal(9) })
    }

    #[test]
    fn failures_cost_restarts_until_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut groups = Scripted { exits: vec![killed(), GroupExit::Finished], started: vec![] };
        let mut lines = Vec::new();
        let result = driver(dir.path(), 1).fit(&mut groups, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(result.restarts.len(), 1);
        assert_eq!(groups.started[0].start, Start::AsAsked);
        assert_eq!(groups.started[1].start, Start::Over);
        assert_eq!(
            lines,
            ["raytrain: worker rank 1 was killed by signal 9 (SIGKILL); restart 1 of 1 from the beginning (no \
              checkpoint yet) with 2 worker(s)"]
        );
        assert!(dir.path().join(crate::result::RESULT_FILE).is_file());

        let dir = tempfile::tempdir().unwrap();
        let mut groups = Scripted { exits: vec![killed()], started: vec![] };
        let err = driver(dir.path(), 0).fit(&mut groups, &mut |_| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            "worker rank 1 was killed by signal 9 (SIGKILL); [failure] max_failures = 0 allows no restart"
        );
    }

    #[test]
    fn a_driver_started_again_continues_an_unfinished_run() {
        let dir = tempfile::tempdir().unwrap();
        let first = driver(dir.path(), 0);
        first.save_state(&DriverState { fresh: true, ..DriverState::default() }).unwrap();
        let mut groups = Scripted { exits: vec![GroupExit::Finished], started: vec![] };
        first.fit(&mut groups, &mut |_| {}).unwrap();
        // No checkpoint was written, so the unfinished run starts over rather than as a new run.
        assert_eq!(groups.started[0].start, Start::Over);
        assert!(first.state().unwrap().unwrap().finished);
    }
}
