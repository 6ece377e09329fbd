//! `llmtrain config`: writes the launch config `llmtrain launch` reads, asking what `accelerate config` asks (on
//! stderr, answers from stdin), or from flags alone with `--non-interactive`.

mod questionnaire;

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Result;
use llmtrain_accel::launch_config::{DistributedType, LaunchConfig, Launcher, MixedPrecision};
use questionnaire::Answers;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the config [default: $LLMTRAIN_CONFIG_DIR/default_config.toml, else
    /// $XDG_CONFIG_HOME/llmtrain/default_config.toml, else ~/.config/llmtrain/default_config.toml].
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Ask nothing: the flags below give the answers, the rest take their defaults. Without it, the questions
    /// these flags answer are skipped.
    #[arg(long)]
    non_interactive: bool,
    /// no, multi-cpu or multi-gpu [default: multi-cpu (multi-gpu in a cuda or wgpu build) with more than one
    /// process or machine, else no].
    #[arg(long, value_name = "TYPE")]
    distributed_type: Option<DistributedType>,
    /// Machines taking part.
    #[arg(long, value_name = "N")]
    num_machines: Option<usize>,
    /// This machine's rank among them, from 0.
    #[arg(long, value_name = "RANK")]
    machine_rank: Option<usize>,
    /// Address of the machine of rank 0 (needed with several machines).
    #[arg(long, value_name = "ADDRESS", alias = "main-address")]
    main_process_ip: Option<String>,
    /// Port of the main process [default: 29500].
    #[arg(long, value_name = "PORT", alias = "main-port")]
    main_process_port: Option<u16>,
    /// Processes in total over all machines.
    #[arg(long, value_name = "N")]
    num_processes: Option<usize>,
    /// `all` or a comma-separated list of GPU ids on this machine.
    #[arg(long, value_name = "IDS")]
    gpu_ids: Option<String>,
    /// no, fp16 or bf16.
    #[arg(long, value_name = "PRECISION")]
    mixed_precision: Option<MixedPrecision>,
    /// in-process, mpirun or srun.
    #[arg(long, value_name = "LAUNCHER")]
    launcher: Option<Launcher>,
    /// Hostfile for mpirun.
    #[arg(long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
    /// Replace the output file even if it is not a launch config this command wrote.
    #[arg(long)]
    overwrite: bool,
}

impl Args {
    fn answers(&self) -> Answers {
        // As `accelerate config` / `accelerate launch` do: more than one process or machine means data parallel,
        // on the GPUs of a GPU build; that answers the machine-type question.
        let inferred = DistributedType::inferred(
            self.num_processes.unwrap_or(1),
            self.num_machines.unwrap_or(1),
            cfg!(feature = "cuda") || cfg!(feature = "wgpu"),
        );
        Answers {
            distributed_type: self.distributed_type.or((inferred != DistributedType::No).then_some(inferred)),
            num_machines: self.num_machines,
            machine_rank: self.machine_rank,
            main_process_ip: self.main_process_ip.clone(),
            main_process_port: self.main_process_port,
            num_processes: self.num_processes,
            gpu_ids: self.gpu_ids.clone(),
            mixed_precision: self.mixed_precision,
            launcher: self.launcher,
            hostfile: self.hostfile.clone(),
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    // Settle where to write before asking, so a missing HOME does not waste the answers.
    let path = match &args.output {
        Some(path) => path.clone(),
        None => LaunchConfig::default_path()?,
    };
    // Settled before asking too: another file at that path is the user's, not ours to replace.
    if path.exists() && !args.overwrite && !LaunchConfig::is_launch_config_file(&path) {
        anyhow::bail!(
            "{}: exists and is not a launch config written by `llmtrain config`; choose another --output, or pass \
             --overwrite to replace it",
            path.display()
        );
    }
    let config = if args.non_interactive {
        args.answers().resolve()?
    } else {
        let stdin = std::io::stdin();
        let piped = !stdin.is_terminal();
        let mut input = Echo { inner: stdin.lock(), echo: piped };
        let mut stderr = std::io::stderr().lock();
        questionnaire::ask_with(&args.answers(), &mut input, &mut stderr)?
    };
    // The error already names the file.
    config.save(&path)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Answers read from a pipe do not appear on the terminal; echoing them to stderr keeps the transcript readable
/// (one question and its answer a line).
struct Echo<R> {
    inner: R,
    echo: bool,
}

impl<R: BufRead> Read for Echo<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Echo<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if self.echo
            && amt > 0
            && let Ok(buf) = self.inner.fill_buf()
        {
            // The transcript is best effort; a closed stderr must not stop the questionnaire.
            let mut stderr = std::io::stderr();
            let _ = stderr.write_all(&buf[..amt.min(buf.len())]);
        }
        self.inner.consume(amt);
    }
}
