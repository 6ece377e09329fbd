//! `llmtrain launch [--config-file F] [--num-processes N] [...] [--dry-run] -- <llmtrain subcommand>`: runs a
//! training command as data-parallel ranks, in-process (threads) or as processes under `mpirun` / `srun`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use llmtrain_accel::launch_config::Origin;
use llmtrain_accel::{DistributedType, LaunchConfig, Launcher, MixedPrecision, process_launch_command};
use llmtrain_core::device::DeviceKind;
use llmtrain_core::interrupt::{SIGINT, SIGTERM};
use llmtrain_core::kernels::Kernels;

#[derive(clap::Args)]
pub struct Args {
    /// A launch config written by `llmtrain config` (default: the user's default config, if there is one).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Processes (ranks) in total, over all machines.
    #[arg(long, value_name = "N")]
    pub num_processes: Option<usize>,
    /// Machines taking part (more than 1 needs --launcher mpirun or srun and --main-process-ip).
    #[arg(long, value_name = "N")]
    pub num_machines: Option<usize>,
    /// This machine's rank among the machines, from 0.
    #[arg(long, value_name = "RANK")]
    pub machine_rank: Option<usize>,
    /// Address of the machine of rank 0; the ranks get it as MASTER_ADDR.
    #[arg(long, value_name = "ADDRESS", alias = "main-address")]
    pub main_process_ip: Option<String>,
    /// Port of the main process; the ranks get it as MASTER_PORT [default: 29500].
    #[arg(long, value_name = "PORT", alias = "main-port")]
    pub main_process_port: Option<u16>,
    /// in-process (threads of this process), mpirun or srun.
    #[arg(long)]
    pub launcher: Option<Launcher>,
    /// mpirun's hostfile (several machines).
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
    /// no, fp16 or bf16: the precision of the forward and backward passes (the command's own flag wins).
    #[arg(long, value_name = "PRECISION")]
    pub mixed_precision: Option<MixedPrecision>,
    /// A DeepSpeed config (ds_config.json) for every rank's run, as `train --deepspeed` (the command's own flag
    /// wins).
    #[arg(long, value_name = "FILE")]
    pub deepspeed: Option<PathBuf>,
    /// Print what would run (the exact mpirun / srun line) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// The llmtrain command each rank runs, after `--` (e.g. `train --config configs/quickstart.toml`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// The command each rank runs, as the ranks parse it.
#[derive(Parser)]
#[command(name = "llmtrain", no_binary_name = true)]
struct RankCli {
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    #[command(subcommand)]
    command: RankCommand,
}

#[derive(clap::Subcommand)]
enum RankCommand {
    Train(super::train::Args),
}

pub fn start(args: &Args, device: DeviceKind) -> Result<()> {
    // Parsing here catches a wrong command before any rank starts.
    let rank_cli = RankCli::try_parse_from(&args.command).map_err(|err| {
        let first = err.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        anyhow!("launch -- {}: {first} (launch runs training commands: train)", args.command.join(" "))
    })?;
    // The command's own `--device` wins over launch's; either is a device asked for, which a multi-gpu config
    // does not override.
    let asked = if args.command.iter().any(|a| is_device_flag(a)) {
        Some(rank_cli.device)
    } else if device_flag_given() {
        Some(device)
    } else {
        None
    };
    let (config, device) = resolve_config(args, asked.unwrap_or(device), asked.is_some())?;
    match config.launcher {
        Launcher::InProcess => {
            let RankCommand::Train(mut train) = rank_cli.command;
            // The launch's precision applies unless the command asked for one itself; `no` leaves the run
            // config's `[memopt] mixed_precision` in charge.
            if train.mixed_precision.is_none() && config.mixed_precision != MixedPrecision::No {
                train.mixed_precision = Some(config.mixed_precision);
            }
            if train.deepspeed.is_none() {
                train.deepspeed.clone_from(&args.deepspeed);
            }
            if args.dry_run {
                println!(
                    "{} in-process rank(s) on this one machine, on {device}: llmtrain {}",
                    config.num_processes,
                    args.command.join(" ")
                );
                if let Some(ip) = &config.main_process_ip {
                    eprintln!(
                        "note: the main process address {ip} is not used: in-process ranks are threads of this process"
                    );
                }
                return Ok(());
            }
            let job = InProcessJob { world: config.num_processes, train };
            crate::backend::dispatch!(device, launch, &job)
        }
        Launcher::Mpirun | Launcher::Srun => launch_processes(&config, args, device),
    }
}

/// Whether `--device` was given to `llmtrain` itself (before `--`): clap fills in its default otherwise, and
/// only a device asked for overrides a multi-gpu launch config.
fn device_flag_given() -> bool {
    std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a.to_str().is_some_and(is_device_flag))
}

/// `--device` or `--device=X`.
fn is_device_flag(word: &str) -> bool {
    word == "--device" || word.starts_with("--device=")
}

/// The GPU kind this build has, if any (cuda first).
fn gpu_kind() -> Option<DeviceKind> {
    if cfg!(feature = "cuda") {
        Some(DeviceKind::Cuda)
    } else if cfg!(feature = "wgpu") {
        Some(DeviceKind::Wgpu)
    } else {
        None
    }
}

fn is_gpu(device: DeviceKind) -> bool {
    device != DeviceKind::Cpu
}

/// How to build a GPU `llmtrain`.
const GPU_BUILD: &str = "cargo build --release -p llmtrain-cli --features cuda";

/// Ranks as threads of this process.
pub struct InProcessJob {
    world: usize,
    train: super::train::Args,
}

/// Runs the job's ranks on backend `B`; rank r uses device r of `device`'s kind (GPU r; the CPU is one device).
pub fn run<B: Kernels>(job: &InProcessJob, device: &B::Device) -> Result<()> {
    // Every rank stopped after the same step on a signal: report it once, as a single process does.
    match super::train::run_threads::<B>(&job.train, job.world, device)? {
        Some(stop) => Err(stop.into()),
        None => Ok(()),
    }
}

/// The launch config — the file (named, or the user's default if present), then the flags over it — and the
/// ranks' device: `device`, asked for when `device_asked`, else the one the config's distributed type needs.
fn resolve_config(args: &Args, device: DeviceKind, device_asked: bool) -> Result<(LaunchConfig, DeviceKind)> {
    let file = match &args.config_file {
        Some(path) => Some(path.clone()),
        None => LaunchConfig::default_path().ok().filter(|path| path.is_file()),
    };
    let mut config = match &file {
        Some(path) => LaunchConfig::load(path)?,
        None => LaunchConfig::default(),
    };
    let mut flags = Vec::new();
    // Each flag given replaces its key, and is recorded so that errors name the flag.
    macro_rules! set {
        ($field:ident) => {
            if let Some(value) = &args.$field {
                config.$field = value.clone();
                flags.push(stringify!($field));
            }
        };
        ($field:ident => Some) => {
            if let Some(value) = &args.$field {
                config.$field = Some(value.clone());
                flags.push(stringify!($field));
            }
        };
    }
    set!(num_processes);
    set!(num_machines);
    set!(machine_rank);
    set!(main_process_ip => Some);
    set!(main_process_port);
    set!(launcher);
    set!(hostfile => Some);
    set!(mixed_precision);
    if is_gpu(device) && !device.compiled() {
        bail!(
            "--device {device}: this llmtrain was built without the `{device}` feature; build a GPU binary with \
             `cargo build --release -p llmtrain-cli --features {device}`"
        );
    }
    // As `accelerate launch` does: more than one process or machine means data parallel, on the device asked
    // for, else on the GPUs of a GPU build.
    if config.distributed_type == DistributedType::No {
        let gpu = if device_asked { is_gpu(device) } else { gpu_kind().is_some() };
        config.distributed_type = DistributedType::inferred(config.num_processes, config.num_machines, gpu);
    }
    let mut device = device;
    if config.distributed_type == DistributedType::MultiGpu && !is_gpu(device) {
        if device_asked {
            // `--device cpu` forces the CPU, as `accelerate launch --cpu` does.
            config.distributed_type = DistributedType::MultiCpu;
        } else if let Some(gpu) = gpu_kind() {
            device = gpu;
        } else {
            // Only a file says multi-gpu on a CPU-only build (inference picks multi-cpu there).
            let source = file.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default();
            bail!(
                "{source}distributed_type \"multi-gpu\" needs a GPU build, and this llmtrain is CPU-only: build one \
                 with `{GPU_BUILD}`, or run on the CPU with --device cpu"
            );
        }
    }
    if config.num_machines > 1 && args.launcher.is_none() && config.launcher == Launcher::InProcess {
        config.launcher = Launcher::Mpirun;
    }
    config.validate_from(&Origin { file, flags })?;
    Ok((config, device))
}

/// Ranks as processes: this binary under `mpirun` or `srun`, with the rank command's arguments.
fn launch_processes(config: &LaunchConfig, args: &Args, device: DeviceKind) -> Result<()> {
    let program = std::env::current_exe().context("locating the llmtrain binary")?;
    // The device goes first, once: the command's own `--device X` / `--device=X` (flag and value) is replaced.
    let mut rank_args = vec!["--device".to_string(), device.to_string()];
    let mut words = args.command.iter();
    while let Some(word) = words.next() {
        if word == "--device" {
            words.next();
        } else if !word.starts_with("--device=") {
            rank_args.push(word.clone());
        }
    }
    // Whether the rank command gives `flag` itself (`--flag X` or `--flag=X`): then the launch's value yields.
    let asks = |flag: &str| args.command.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if config.mixed_precision != MixedPrecision::No && !asks("--mixed-precision") {
        rank_args.extend(["--mixed-precision".into(), config.mixed_precision.to_string()]);
    }
    if let Some(file) = args.deepspeed.as_ref().filter(|_| !asks("--deepspeed")) {
        // Absolute, so that a rank started in another directory (srun, a remote machine) finds it.
        let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
        rank_args.extend(["--deepspeed".into(), file.display().to_string()]);
    }
    let line = process_launch_command(config, &program, &rank_args)?;
    if args.dry_run {
        println!("{}", line.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "));
        if !cfg!(feature = "mpi") {
            eprintln!("note: this llmtrain was built without the `mpi` feature; its ranks would each run alone");
        }
        return Ok(());
    }
    check_process_launcher(config.launcher).map_err(|err| anyhow!("--launcher {}: {err:#}", config.launcher))?;
    let tool = &line[0];
    // A terminal's Ctrl-C reaches mpirun/srun and the ranks too; this process waits for them to checkpoint and
    // stop instead of leaving them behind (a second Ctrl-C stops it at once).
    let _graceful = llmtrain_core::interrupt::GracefulStop::enter_quietly();
    let status = Command::new(tool).args(&line[1..]).status().with_context(|| format!("starting {tool}"))?;
    // Ranks stopped by a signal after checkpointing (rank 0 said so): end the same way.
    let signal_codes = [SIGINT, SIGTERM].map(llmtrain_core::interrupt::exit_code);
    if let Some(code) = status.code().filter(|code| signal_codes.contains(code)) {
        std::process::exit(code);
    }
    if !status.success() {
        bail!("{tool} exited with {status}: a rank failed (its error is above)");
    }
    Ok(())
}

/// Whether this build can start ranks as processes with `launcher` (mpirun or srun) here: the `mpi` feature, and
/// the tool on PATH.
pub fn check_process_launcher(launcher: Launcher) -> Result<()> {
    if !cfg!(feature = "mpi") {
        bail!(
            "this llmtrain was built without the `mpi` feature (cargo build --release -p llmtrain-cli --features mpi)"
        );
    }
    let tool = launcher.to_string();
    if find_on_path(&tool).is_none() {
        let install = if tool == "mpirun" {
            "install Open MPI (apt-get install openmpi-bin)"
        } else {
            "run inside a Slurm allocation"
        };
        bail!("{tool} not found on PATH: {install}, or use the in-process launcher on one machine");
    }
    Ok(())
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path: OsString = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}
