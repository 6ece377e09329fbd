//! `llmtrain launch [--config-file F] [--num-processes N] [...] [--dry-run] -- <llmtrain subcommand>`: runs a
//! training command as data-parallel ranks, in-process (threads) or as processes under `mpirun` / `srun`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::Backend;
use clap::Parser;
use llmtrain_accel::{DistributedType, LaunchConfig, Launcher, MixedPrecision, process_launch_command, run_in_process};
use llmtrain_core::device::DeviceKind;

#[derive(clap::Args)]
pub struct Args {
    /// A launch config written by `llmtrain config` (default: the user's default config, if there is one).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Ranks in total (over all machines).
    #[arg(long)]
    pub num_processes: Option<usize>,
    #[arg(long)]
    pub num_machines: Option<usize>,
    #[arg(long)]
    pub machine_rank: Option<usize>,
    /// Address of machine rank 0.
    #[arg(long, alias = "main-process-ip")]
    pub main_address: Option<String>,
    #[arg(long, alias = "main-process-port")]
    pub main_port: Option<u16>,
    /// in-process (threads of this process), mpirun or srun.
    #[arg(long)]
    pub launcher: Option<Launcher>,
    /// mpirun's hostfile (several machines).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    #[arg(long)]
    pub mixed_precision: Option<MixedPrecision>,
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
    let config = resolve_config(args, device)?;
    // Parsing here catches a wrong command before any rank starts.
    let rank_cli = RankCli::try_parse_from(&args.command).map_err(|err| {
        let first = err.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        anyhow!("launch -- {}: {first} (launch runs training commands: train)", args.command.join(" "))
    })?;
    let device = if args.command.iter().any(|a| a == "--device" || a.starts_with("--device=")) {
        rank_cli.device
    } else {
        device
    };
    match config.launcher {
        Launcher::InProcess => {
            let RankCommand::Train(mut train) = rank_cli.command;
            // The launch's precision applies unless the command asked for one itself; `no` leaves the run
            // config's `[memopt] mixed_precision` in charge.
            if train.mixed_precision.is_none() && config.mixed_precision != MixedPrecision::No {
                train.mixed_precision = Some(config.mixed_precision);
            }
            if args.dry_run {
                println!(
                    "{} in-process rank(s) on {device}: llmtrain {}",
                    config.num_processes,
                    args.command.join(" ")
                );
                return Ok(());
            }
            let job = InProcessJob { world: config.num_processes, train };
            crate::backend::dispatch!(device, launch, &job)
        }
        Launcher::Mpirun | Launcher::Srun => launch_processes(&config, args, device),
    }
}

/// Ranks as threads of this process.
pub struct InProcessJob {
    world: usize,
    train: super::train::Args,
}

/// Runs the job's ranks on backend `B`; rank r uses device r of `device`'s kind (GPU r; the CPU is one device).
pub fn run<B: Backend>(job: &InProcessJob, device: &B::Device) -> Result<()> {
    run_in_process(job.world, |comm| {
        let rank_device = super::train::device_for_rank::<B>(device, comm.rank());
        super::train::run_rank::<B>(&job.train, &rank_device, comm)
    })?;
    Ok(())
}

/// The launch config: the file (named, or the user's default if present), then the flags over it.
fn resolve_config(args: &Args, device: DeviceKind) -> Result<LaunchConfig> {
    let mut config = match &args.config_file {
        Some(path) => LaunchConfig::load(path)?,
        None => match LaunchConfig::default_path() {
            Ok(path) if path.is_file() => LaunchConfig::load(&path)?,
            _ => LaunchConfig::default(),
        },
    };
    macro_rules! set {
        ($flag:ident => $field:ident) => {
            if let Some(value) = &args.$flag {
                config.$field = value.clone();
            }
        };
    }
    set!(num_processes => num_processes);
    set!(num_machines => num_machines);
    set!(machine_rank => machine_rank);
    set!(main_port => main_process_port);
    set!(launcher => launcher);
    set!(mixed_precision => mixed_precision);
    if let Some(address) = &args.main_address {
        config.main_process_ip = Some(address.clone());
    }
    if let Some(hostfile) = &args.hostfile {
        config.hostfile = Some(hostfile.clone());
    }
    // As `accelerate launch` does: more than one process means data parallel on the device asked for.
    if config.num_processes > 1 && config.distributed_type == DistributedType::No {
        config.distributed_type =
            if device == DeviceKind::Cpu { DistributedType::MultiCpu } else { DistributedType::MultiGpu };
    }
    if config.num_machines > 1 && args.launcher.is_none() && config.launcher == Launcher::InProcess {
        config.launcher = Launcher::Mpirun;
    }
    config.validate()?;
    Ok(config)
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
    let asks_precision = args.command.iter().any(|a| a == "--mixed-precision" || a.starts_with("--mixed-precision="));
    if config.mixed_precision != MixedPrecision::No && !asks_precision {
        rank_args.extend(["--mixed-precision".into(), config.mixed_precision.to_string()]);
    }
    let line = process_launch_command(config, &program, &rank_args)?;
    if args.dry_run {
        println!("{}", line.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "));
        if !cfg!(feature = "mpi") {
            eprintln!("note: this llmtrain was built without the `mpi` feature; its ranks would each run alone");
        }
        return Ok(());
    }
    if !cfg!(feature = "mpi") {
        bail!(
            "--launcher {}: this llmtrain was built without the `mpi` feature (cargo build --release --features mpi)",
            config.launcher
        );
    }
    let tool = &line[0];
    if find_on_path(tool).is_none() {
        let install = if tool == "mpirun" {
            "install Open MPI (apt-get install openmpi-bin)"
        } else {
            "run inside a Slurm allocation"
        };
        bail!("{tool} not found on PATH: {install}, or use --launcher in-process on one machine");
    }
    let status = Command::new(tool).args(&line[1..]).status().with_context(|| format!("starting {tool}"))?;
    if !status.success() {
        bail!("{tool} exited with {status}: a rank failed (its error is above)");
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
