//! `llmtrain train --config FILE` when the config has a `[scaling]` section: llmtrain-raytrain's driver starts
//! the run's worker groups (threads, or `llmtrain train` processes under mpirun / srun), and restarts them from
//! the newest checkpoint when a worker fails. This module only chooses and composes: the workers are this
//! binary's `train`, and the driver is the raytrain crate's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use llmtrain_accel::{AccelError, LaunchConfig, Launcher, process_launch_command};
use llmtrain_core::config::RunConfig;
use llmtrain_core::device::DeviceKind;
use llmtrain_core::dist::DistError;
use llmtrain_core::kernels::Kernels;
use llmtrain_core::train::checkpoint::ResumeFrom;
use llmtrain_raytrain::{
    Driver, Exit, FailureSection, GroupExit, GroupSpec, RayError, RunSection, ScalingSection, Start, Status,
    WorkerFailure, WorkerGroups, run_process_group,
};

use super::train::{Args, Interrupted};

/// Runs the driver for `config`'s `[scaling]` section, on `device`'s kind.
pub fn start(args: &Args, config: &RunConfig, scaling: ScalingSection, device: DeviceKind) -> Result<()> {
    let failure = config.section::<FailureSection>()?.unwrap_or(FailureSection { max_failures: 0 });
    let run = config.section::<RunSection>()?;
    // The flag wins, then `[run]`'s storage_path/name, then `[output] dir`.
    let run_dir = match (&args.output_dir, &run) {
        (Some(dir), _) => dir.clone(),
        (None, Some(run)) => {
            let storage = match &run.storage_path {
                Some(path) => config.resolve_path(path),
                None => config.output.dir.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            };
            storage.join(&run.name)
        }
        (None, None) => config.output.dir.clone(),
    };
    if scaling.use_gpu && device == DeviceKind::Cpu {
        bail!(
            "{}: key `scaling.use_gpu`: true, but the device is the CPU: pass --device cuda (or wgpu) to a GPU build",
            config.path().display()
        );
    }
    let mut scaling = scaling;
    // Relative to the config, as every path of it; absolute, for mpirun started in another directory.
    scaling.hostfile = scaling.hostfile.as_deref().map(|file| absolute(&config.resolve_path(file)));
    if scaling.num_workers.is_elastic() && (args.deepspeed.is_some() || config.training.deepspeed.is_some()) {
        bail!(
            "{}: key `scaling.num_workers`: an elastic group keeps its global batch by accumulation, which a \
             DeepSpeed config fixes for one number of ranks: give the batch in the run config, or a fixed num_workers",
            config.path().display()
        );
    }
    let accumulation = args.gradient_accumulation_steps.unwrap_or(config.training.gradient_accumulation_steps);
    let driver = Driver {
        scaling: scaling.clone(),
        failure,
        run_dir: absolute(&run_dir),
        accumulation,
        overwrite: args.overwrite,
        resume_asked: args.resume.is_some(),
        continue_unfinished: matches!(args.resume, None | Some(ResumeFrom::Last)),
    };
    // Sized once before anything is written: too few slots, a bad hostfile or no allocation stop here.
    let (workers, _, _) = driver.size_group().map_err(|err| match err {
        // A hostfile's error names the hostfile; the others are the config's.
        RayError::Hostfile { .. } => anyhow::Error::from(err),
        err => anyhow::anyhow!("{}: {err}", config.path().display()),
    })?;
    if scaling.launcher != Launcher::InProcess {
        super::launch::check_process_launcher(scaling.launcher)
            .map_err(|err| anyhow::anyhow!("{}: key `scaling.launcher`: {err:#}", config.path().display()))?;
    }
    driver.prepare_storage()?;
    let _lock = driver.lock()?;
    driver.check_run_dir()?;
    println!(
        "raytrain: {workers} worker(s) ({} launcher, num_workers = {}), max_failures = {}, run directory {}",
        scaling.launcher,
        scaling.num_workers,
        driver.failure.max_failures,
        driver.run_dir.display()
    );
    let mut groups: Box<dyn WorkerGroups> = match scaling.launcher {
        Launcher::InProcess => Box::new(Threads { args: args.clone(), run_dir: driver.run_dir.clone(), device }),
        launcher => Box::new(Processes {
            args: args.clone(),
            run_dir: driver.run_dir.clone(),
            device,
            launcher,
            hostfile: scaling.hostfile.clone(),
        }),
    };
    let result = driver.fit(groups.as_mut(), &mut |line| eprintln!("{line}"))?;
    if let (Status::Interrupted, Some(signal)) = (result.status, result.signal) {
        let step = llmtrain_raytrain::get_checkpoint(&driver.run_dir)?
            .and_then(|dir| llmtrain_core::train::checkpoint::verify_checkpoint(&dir).ok())
            .map_or(0, |state| state.step);
        return Err(Interrupted { step, signal, report: true }.into());
    }
    println!(
        "raytrain: finished with {} restart(s); result: {}",
        result.restarts.len(),
        driver.run_dir.join(llmtrain_raytrain::RESULT_FILE).display()
    );
    Ok(())
}

/// A path made absolute against the working directory, so that workers started elsewhere find it.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The `train` arguments of a group's workers: the driver's, in the group's run directory, with the group's
/// accumulation, resuming as the driver says.
fn worker_args(args: &Args, run_dir: &Path, spec: &GroupSpec) -> Args {
    let mut worker = args.clone();
    worker.output_dir = Some(run_dir.to_path_buf());
    worker.gradient_accumulation_steps = Some(spec.gradient_accumulation_steps);
    worker.raytrain_worker = true;
    match &spec.start {
        Start::AsAsked => {}
        Start::Resume(dir) => (worker.resume, worker.overwrite) = (Some(ResumeFrom::Dir(dir.clone())), false),
        Start::Over => (worker.resume, worker.overwrite) = (None, true),
    }
    worker
}

/// Worker groups as threads of the driver.
struct Threads {
    args: Args,
    run_dir: PathBuf,
    device: DeviceKind,
}

impl WorkerGroups for Threads {
    fn run(&mut self, spec: &GroupSpec) -> llmtrain_raytrain::Result<GroupExit> {
        let job = ThreadGroup { args: worker_args(&self.args, &self.run_dir, spec), workers: spec.workers };
        let ran: Result<GroupExit> = crate::backend::dispatch!(self.device, driver, &job);
        ran.map_err(|err| llmtrain_raytrain::RayError::Launch(format!("{err:#}")))
    }
}

/// One group of thread workers.
pub struct ThreadGroup {
    args: Args,
    workers: usize,
}

/// Runs a thread group on backend `B`: a worker that fails (an error or a panic) stops the group, and is named.
pub fn run<B: Kernels>(job: &ThreadGroup, device: &B::Device) -> Result<GroupExit> {
    Ok(match super::train::run_threads::<B>(&job.args, job.workers, device) {
        Ok(Some(stop)) => GroupExit::Interrupted(stop.signal),
        Ok(None) => GroupExit::Finished,
        Err(AccelError::Dist(DistError::PeerFailed { rank, reason })) => {
            GroupExit::Failed(WorkerFailure { rank: Some(rank), node: None, how: Exit::Error(reason) })
        }
        Err(err) => GroupExit::Failed(WorkerFailure { rank: None, node: None, how: Exit::Error(err.to_string()) }),
    })
}

/// Worker groups as `llmtrain train` processes under mpirun or srun.
struct Processes {
    args: Args,
    run_dir: PathBuf,
    device: DeviceKind,
    launcher: Launcher,
    hostfile: Option<PathBuf>,
}

impl WorkerGroups for Processes {
    fn run(&mut self, spec: &GroupSpec) -> llmtrain_raytrain::Result<GroupExit> {
        let launch_error = |err: anyhow::Error| llmtrain_raytrain::RayError::Launch(format!("{err:#}"));
        let line = self.command_line(spec).map_err(launch_error)?;
        run_process_group(&line)
    }
}

impl Processes {
    /// The launcher's command line for a group: this binary's `train` as every worker.
    fn command_line(&self, spec: &GroupSpec) -> Result<Vec<String>> {
        let program = std::env::current_exe().context("locating the llmtrain binary")?;
        let worker = worker_args(&self.args, &self.run_dir, spec);
        let mut rank_args = vec!["--device".to_string(), self.device.to_string(), "train".to_string()];
        rank_args.extend(worker.to_command_line());
        let config = LaunchConfig {
            num_processes: spec.workers,
            num_machines: spec.machines,
            launcher: self.launcher,
            hostfile: self.hostfile.clone(),
            ..LaunchConfig::default()
        };
        Ok(process_launch_command(&config, &program, &rank_args)?)
    }
}
