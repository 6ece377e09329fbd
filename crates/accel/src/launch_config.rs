//! The launch config: how many machines and processes a run uses, how its ranks are started and which mixed
//! precision it trains in. `llmtrain config` writes it (asking what `accelerate config` asks) and `llmtrain launch`
//! reads it, like Accelerate's `default_config.yaml`, but in TOML.

use std::cell::Cell;
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The first line of every launch config `llmtrain config` writes.
const HEADER: &str = "# llmtrain launch config, written by `llmtrain config`; `llmtrain launch` reads it.\n";

/// The file name under the config directory, as Accelerate names its own.
pub const DEFAULT_CONFIG_FILE: &str = "default_config.toml";

/// The port the main process listens on unless told otherwise (torch.distributed's and Accelerate's default).
pub const DEFAULT_MAIN_PROCESS_PORT: u16 = 29500;

/// Everything that can go wrong asking for, reading, checking or writing a launch config. Each is one line.
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

    #[error("the answers ended before one to \"{question}\"")]
    InputEnded { question: String },

    #[error("cannot ask: {0}")]
    Prompt(std::io::Error),

    #[error(transparent)]
    Core(#[from] llmtrain_core::CoreError),
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default()
}

type Result<T> = std::result::Result<T, LaunchConfigError>;

/// A name that is not one of an enum's choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{found}`; expected one of: {expected}")]
pub struct ParseChoiceError {
    pub what: &'static str,
    pub found: String,
    pub expected: String,
}

/// The closed sets of answers (machine type, launcher, precision): their TOML names and questionnaire labels.
trait Choice: Copy + PartialEq + 'static {
    const WHAT: &'static str;
    const ALL: &'static [Self];
    /// The serde / command-line name.
    fn name(self) -> &'static str;
    /// How the questionnaire lists it.
    fn label(self) -> &'static str;
}

/// Lower case with `_` as `-`, so `MULTI_GPU` (Accelerate's spelling) and `multi-gpu` are the same answer.
fn normalize(s: &str) -> String {
    s.trim().to_lowercase().replace('_', "-")
}

fn parse_choice<T: Choice>(s: &str) -> std::result::Result<T, ParseChoiceError> {
    let wanted = normalize(s);
    T::ALL.iter().copied().find(|c| normalize(c.name()) == wanted).ok_or_else(|| ParseChoiceError {
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
#[derive(Debug, Clone, Copy, PartialEq)]
enum ComputeEnvironment {
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
    /// `$LLMTRAIN_CONFIG_DIR/default_config.toml`, else `$XDG_CONFIG_HOME/llmtrain/default_config.toml`, else
    /// `~/.config/llmtrain/default_config.toml`.
    pub fn default_path() -> Result<PathBuf> {
        default_path_from(|name| std::env::var_os(name))
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LaunchConfigError::Io { path: path.into(), source })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and checks config text; `path` only names it in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let config: LaunchConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
        config.validate().map_err(|e| match e {
            LaunchConfigError::Invalid(message) => LaunchConfigError::InvalidFile { path: path.into(), message },
            other => other,
        })?;
        Ok(config)
    }

    /// Whether `path` holds a file [`save`](Self::save) wrote (its first line is our header), which saving may
    /// replace.
    pub fn is_launch_config_file(path: &Path) -> bool {
        std::fs::read_to_string(path).is_ok_and(|text| text.starts_with(HEADER))
    }

    /// The TOML text [`save`](Self::save) writes.
    pub fn to_toml_string(&self) -> Result<String> {
        let body = toml::to_string(self).map_err(|e| LaunchConfigError::Serialize(e.to_string()))?;
        Ok(format!("{HEADER}{body}"))
    }

    /// Checks, then writes the config through a temporary file in the same directory and a rename, so a reader
    /// never sees half a file and an existing one is replaced whole. Creates missing parent directories.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let text = self.to_toml_string()?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| LaunchConfigError::Io { path: parent.to_path_buf(), source })?;
        }
        llmtrain_core::fsutil::write_atomic(path, text.as_bytes())?;
        Ok(())
    }

    /// Processes each machine runs.
    pub fn processes_per_machine(&self) -> usize {
        self.num_processes / self.num_machines.max(1)
    }

    /// The GPU ids of `gpu_ids`, or `None` for `all`.
    pub fn gpu_id_list(&self) -> Result<Option<Vec<u32>>> {
        parse_gpu_ids(&self.gpu_ids).map_err(|e| LaunchConfigError::Invalid(format!("gpu_ids: {e}")))
    }

    /// Checks that the fields describe a launch that can work; the error names the offending keys.
    pub fn validate(&self) -> Result<()> {
        let namer = Namer { origin: None, named_a_key: Cell::new(false) };
        self.check(&namer).map_err(LaunchConfigError::Invalid)
    }

    /// [`validate`](Self::validate), naming each setting the way the user gave it: a flag (`--num-processes 4`)
    /// for what `origin` says came from flags (or, without a file, from defaults a flag would change), a key for
    /// what came from `origin`'s file, whose path then starts the message.
    pub fn validate_from(&self, origin: &Origin) -> Result<()> {
        let namer = Namer { origin: Some(origin), named_a_key: Cell::new(false) };
        self.check(&namer).map_err(|message| match &origin.file {
            Some(path) if namer.named_a_key.get() => LaunchConfigError::InvalidFile { path: path.clone(), message },
            _ => LaunchConfigError::Invalid(message),
        })
    }

    fn check(&self, n: &Namer<'_>) -> std::result::Result<(), String> {
        let distributed = self.distributed_type != DistributedType::No;
        if self.num_machines == 0 {
            return Err(format!("{} must be at least 1", n.name("num_machines")));
        }
        if self.num_machines > 1 && !distributed {
            return Err(format!(
                "{} with {}: several machines need multi-cpu or multi-gpu",
                n.value("num_machines", self.num_machines),
                n.text("distributed_type", self.distributed_type)
            ));
        }
        if self.machine_rank >= self.num_machines {
            return Err(format!(
                "{} must be below {} (ranks count from 0)",
                n.value("machine_rank", self.machine_rank),
                n.value("num_machines", self.num_machines)
            ));
        }
        match &self.main_process_ip {
            Some(ip) => check_address(ip).map_err(|e| format!("{}: {e}", n.name("main_process_ip")))?,
            None if self.num_machines > 1 => {
                return Err(format!(
                    "{}: {} (the address of machine rank 0) is required",
                    n.value("num_machines", self.num_machines),
                    n.name("main_process_ip")
                ));
            }
            None => {}
        }
        if self.main_process_port == 0 {
            return Err(format!("{} must not be 0", n.name("main_process_port")));
        }
        if self.num_processes == 0 {
            return Err(format!("{} must be at least 1", n.name("num_processes")));
        }
        if !distributed && self.num_processes > 1 {
            return Err(format!(
                "{} with {} (one process): use multi-cpu or multi-gpu",
                n.value("num_processes", self.num_processes),
                n.text("distributed_type", self.distributed_type)
            ));
        }
        if !self.num_processes.is_multiple_of(self.num_machines) {
            return Err(format!(
                "{} does not divide evenly over {} (each machine runs the same number)",
                n.value("num_processes", self.num_processes),
                n.value("num_machines", self.num_machines)
            ));
        }
        let gpus = parse_gpu_ids(&self.gpu_ids).map_err(|e| format!("{}: {e}", n.name("gpu_ids")))?;
        if self.distributed_type == DistributedType::MultiGpu {
            check_gpu_count(gpus.as_deref(), self.processes_per_machine())
                .map_err(|e| format!("{}: {e}", n.name("gpu_ids")))?;
        }
        if self.launcher == Launcher::InProcess && self.num_machines > 1 {
            return Err(format!(
                "{} runs on one machine; with {} use mpirun or srun",
                n.text("launcher", self.launcher),
                n.value("num_machines", self.num_machines)
            ));
        }
        if self.hostfile.is_some() && self.launcher != Launcher::Mpirun {
            return Err(format!(
                "{} is only used by the mpirun launcher, not by {}",
                n.name("hostfile"),
                n.text("launcher", self.launcher)
            ));
        }
        Ok(())
    }
}

/// Where the settings of a launch came from, so an error names each the way the user gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file the settings not set by flags came from; `None`: they are defaults, which flags would change,
    /// so they are named as flags too.
    pub file: Option<PathBuf>,
    /// The keys set by command-line flags: `num_processes` for `--num-processes` (a key's flag is the key with
    /// `--` before it and `-` for `_`).
    pub flags: Vec<&'static str>,
}

impl Origin {
    /// Every setting from flags or defaults (no file).
    pub fn flags() -> Self {
        Origin::default()
    }
}

/// The flag of a key: `--num-processes` for `num_processes`.
pub fn flag_of(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// Names keys in validation messages; records whether it named one as a key of the file.
struct Namer<'a> {
    /// `None`: plain keys, no file.
    origin: Option<&'a Origin>,
    named_a_key: Cell<bool>,
}

impl Namer<'_> {
    fn is_flag(&self, key: &str) -> bool {
        self.origin.is_some_and(|o| o.file.is_none() || o.flags.contains(&key))
    }

    /// `--num-processes` or `num_processes`.
    fn name(&self, key: &str) -> String {
        if self.is_flag(key) {
            flag_of(key)
        } else {
            self.named_a_key.set(true);
            key.to_string()
        }
    }

    /// A number: `--num-processes 4` or `num_processes 4`.
    fn value(&self, key: &str, value: impl fmt::Display) -> String {
        format!("{} {value}", self.name(key))
    }

    /// A string: `--launcher srun` or `launcher "srun"`, as each is written.
    fn text(&self, key: &str, value: impl fmt::Display) -> String {
        if self.is_flag(key) { format!("{} {value}", flag_of(key)) } else { format!("{} \"{value}\"", self.name(key)) }
    }
}

fn default_path_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let dir = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = dir("LLMTRAIN_CONFIG_DIR") {
        return Ok(dir.join(DEFAULT_CONFIG_FILE));
    }
    // The XDG spec says to ignore a relative XDG_CONFIG_HOME.
    if let Some(dir) = dir("XDG_CONFIG_HOME").filter(|d| d.is_absolute()) {
        return Ok(dir.join("llmtrain").join(DEFAULT_CONFIG_FILE));
    }
    match dir("HOME").or_else(|| dir("USERPROFILE")) {
        Some(home) => Ok(home.join(".config").join("llmtrain").join(DEFAULT_CONFIG_FILE)),
        None => Err(LaunchConfigError::NoConfigDir),
    }
}

/// One line `file:line:column: key `k`: message`; the key is the one the error's span sits on.
fn toml_error(err: &toml::de::Error, text: &str, path: &Path) -> LaunchConfigError {
    let mut message = err.message().trim().replace('\n', " ");
    // (start of the error's line, error offset), both byte offsets into `text`.
    let place = err.span().and_then(|s| {
        let start = s.start.min(text.len());
        let before = text.get(..start)?;
        Some((before.rfind('\n').map(|i| i + 1).unwrap_or(0), start))
    });
    let (line, column) = match place {
        Some((line_start, start)) => {
            (text[..start].matches('\n').count() + 1, text[line_start..start].chars().count() + 1)
        }
        None => (0, 0),
    };
    let mut key = None;
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((unknown, expected)) = rest.split_once('`')
    {
        key = Some(unknown.to_string());
        message = format!("unknown key{expected}");
    } else if let Some((line_start, _)) = place {
        // A bad value: the key is what stands before `=` on its line.
        let line_text = text[line_start..].lines().next().unwrap_or_default();
        if let Some((k, _)) = line_text.split_once('=') {
            let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
            if !k.is_empty() && !k.starts_with('#') {
                key = Some(k.to_string());
            }
        }
    }
    LaunchConfigError::Toml { path: path.into(), line, column, key, message }
}

fn check_address(ip: &str) -> std::result::Result<(), String> {
    if ip.trim().is_empty() {
        Err("an address is required".into())
    } else if ip.chars().any(char::is_whitespace) {
        Err(format!("`{ip}` is not an address (it holds spaces)"))
    } else if ip.contains(',') {
        // It would also split srun's `--export=` list.
        Err(format!("`{ip}` is not an address (it holds a comma)"))
    } else {
        Ok(())
    }
}

fn check_processes(num_processes: usize, num_machines: usize) -> std::result::Result<(), String> {
    if num_processes == 0 {
        Err("num_processes must be at least 1".into())
    } else if !num_processes.is_multiple_of(num_machines) {
        Err(format!(
            "num_processes {num_processes} does not divide evenly over num_machines {num_machines} \
             (each machine runs the same number)"
        ))
    } else {
        Ok(())
    }
}

/// `all` is `None`; otherwise distinct ids separated by commas.
fn parse_gpu_ids(s: &str) -> std::result::Result<Option<Vec<u32>>, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let mut ids = Vec::new();
    for part in s.split(',').map(str::trim) {
        let id: u32 = part.parse().map_err(|_| format!("`{part}` is not a GPU id (write `all` or ids like 0,1)"))?;
        if ids.contains(&id) {
            return Err(format!("GPU {id} is listed twice"));
        }
        ids.push(id);
    }
    Ok(Some(ids))
}

fn check_gpu_count(ids: Option<&[u32]>, per_machine: usize) -> std::result::Result<(), String> {
    match ids {
        Some(ids) if ids.len() < per_machine => {
            Err(format!("{} GPU(s) listed but each machine runs {per_machine} processes, one per GPU", ids.len()))
        }
        _ => Ok(()),
    }
}

/// Answers fixed in advance (from command-line flags): the questionnaire skips their questions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    pub distributed_type: Option<DistributedType>,
    pub num_machines: Option<usize>,
    pub machine_rank: Option<usize>,
    pub main_process_ip: Option<String>,
    pub main_process_port: Option<u16>,
    pub num_processes: Option<usize>,
    pub gpu_ids: Option<String>,
    pub mixed_precision: Option<MixedPrecision>,
    pub launcher: Option<Launcher>,
    pub hostfile: Option<PathBuf>,
}

impl Answers {
    /// The config these answers give without asking anything: every other question takes its default (the
    /// launcher and process count follow the machine count, as in the questionnaire). Checked.
    pub fn resolve(&self) -> Result<LaunchConfig> {
        let mut prompter: Prompter<'_, std::io::Empty, std::io::Sink> = Prompter { io: None };
        fill(self, &mut prompter)
    }
}

/// Asks what `accelerate config` asks, on `output`, reading one answer a line from `input`. Every question shows
/// its default in brackets and an empty answer takes it; an invalid answer is asked again with the reason; the
/// input ending before the last answer is an error.
pub fn ask(input: &mut impl BufRead, output: &mut impl Write) -> Result<LaunchConfig> {
    ask_with(&Answers::default(), input, output)
}

/// [`ask`], skipping the questions `answers` already answers.
pub fn ask_with(answers: &Answers, input: &mut impl BufRead, output: &mut impl Write) -> Result<LaunchConfig> {
    fill(answers, &mut Prompter { io: Some((input, output)) })
}

/// Asks questions, or (without `io`) answers each with its default.
struct Prompter<'a, R, W> {
    io: Option<(&'a mut R, &'a mut W)>,
}

impl<R: BufRead, W: Write> Prompter<'_, R, W> {
    fn interactive(&self) -> bool {
        self.io.is_some()
    }

    /// Asks until `parse` accepts the trimmed answer; `parse("")` must give the default (or refuse when there is
    /// none). Without `io`, the default is the answer.
    fn ask<T>(
        &mut self,
        question: &str,
        default_shown: Option<&str>,
        mut parse: impl FnMut(&str) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let Some((input, output)) = &mut self.io else {
            let question = question.lines().next().unwrap_or(question);
            return parse("").map_err(|reason| LaunchConfigError::Invalid(format!("{question} {reason}")));
        };
        let prompt = match default_shown {
            Some(default) => format!("{question} [{default}]: "),
            None => format!("{question} "),
        };
        loop {
            output.write_all(prompt.as_bytes()).and_then(|()| output.flush()).map_err(LaunchConfigError::Prompt)?;
            let mut line = String::new();
            if input.read_line(&mut line).map_err(LaunchConfigError::Prompt)? == 0 {
                // Close the open prompt line so whatever reports the error starts a line of its own.
                let _ = writeln!(output);
                let question = question.lines().next().unwrap_or(question).to_string();
                return Err(LaunchConfigError::InputEnded { question });
            }
            match parse(line.trim()) {
                Ok(value) => return Ok(value),
                Err(reason) => writeln!(output, "Invalid answer: {reason}").map_err(LaunchConfigError::Prompt)?,
            }
        }
    }

    /// A numbered list; the answer is the number, the name or the label. `check` may refuse a listed choice.
    fn choose<T: Choice>(
        &mut self,
        question: &str,
        default: T,
        check: impl Fn(T) -> std::result::Result<(), String>,
    ) -> Result<T> {
        let mut text = question.to_string();
        for (i, choice) in T::ALL.iter().enumerate() {
            text.push_str(&format!("\n  {i}) {}", choice.label()));
        }
        text.push_str("\nNumber or name");
        let shown = default.label().split(" (").next().unwrap_or_default();
        self.ask(&text, Some(shown), |answer| {
            let chosen = if answer.is_empty() {
                Some(default)
            } else if let Ok(i) = answer.parse::<usize>() {
                T::ALL.get(i).copied()
            } else {
                let wanted = normalize(answer);
                T::ALL.iter().copied().find(|c| {
                    normalize(c.name()) == wanted
                        || normalize(c.label()) == wanted
                        || normalize(c.label().split(" (").next().unwrap_or_default()) == wanted
                })
            };
            let chosen = chosen.ok_or_else(|| {
                let numbers = match T::ALL.len() {
                    1 => "0".to_string(),
                    n => format!("0 to {}", n - 1),
                };
                format!("`{answer}` is not one of the choices; answer {numbers} or a name")
            })?;
            check(chosen)?;
            Ok(chosen)
        })
    }

    fn ask_count(
        &mut self,
        question: &str,
        default: usize,
        check: impl Fn(usize) -> std::result::Result<(), String>,
    ) -> Result<usize> {
        self.ask(question, Some(&default.to_string()), |answer| {
            let n = if answer.is_empty() {
                default
            } else {
                answer.parse().map_err(|_| format!("`{answer}` is not a whole number"))?
            };
            check(n)?;
            Ok(n)
        })
    }
}

/// The questionnaire, in `accelerate config`'s order; questions that do not apply are skipped.
fn fill<R: BufRead, W: Write>(answers: &Answers, p: &mut Prompter<'_, R, W>) -> Result<LaunchConfig> {
    p.choose::<ComputeEnvironment>(
        "In which compute environment are you running? (llmtrain supports only \"This machine\"; \
         no Amazon SageMaker)",
        ComputeEnvironment::ThisMachine,
        |_| Ok(()),
    )?;

    let distributed_type = match answers.distributed_type {
        Some(t) => t,
        None => p.choose("Which type of machine are you using?", DistributedType::No, |_| Ok(()))?,
    };
    let distributed = distributed_type != DistributedType::No;

    let num_machines = match answers.num_machines {
        Some(n) => n,
        None if distributed => p.ask_count(
            "How many different machines will you use (use more than 1 for multi-node training)?",
            1,
            |n| if n == 0 { Err("at least 1 machine is needed".into()) } else { Ok(()) },
        )?,
        None => 1,
    };
    let several = num_machines > 1;

    let machine_rank = match answers.machine_rank {
        Some(r) => r,
        None if several => p.ask_count("What is the rank of this machine?", 0, |r| {
            if r < num_machines {
                Ok(())
            } else {
                Err(format!("ranks of {num_machines} machines run from 0 to {}", num_machines - 1))
            }
        })?,
        None => 0,
    };

    let main_process_ip = match &answers.main_process_ip {
        Some(ip) => Some(ip.clone()),
        None if several && p.interactive() => {
            Some(p.ask("What is the IP address of the machine that will host the main process?", None, |a| {
                check_address(a).map(|()| a.to_string())
            })?)
        }
        None => None,
    };

    let main_process_port = match answers.main_process_port {
        Some(port) => port,
        None if several => p.ask(
            "What is the port you will use to communicate with the main process?",
            Some(&DEFAULT_MAIN_PROCESS_PORT.to_string()),
            |a| match a {
                "" => Ok(DEFAULT_MAIN_PROCESS_PORT),
                _ => match a.parse::<u16>() {
                    Ok(0) | Err(_) => Err(format!("`{a}` is not a port (1 to 65535)")),
                    Ok(port) => Ok(port),
                },
            },
        )?,
        None => DEFAULT_MAIN_PROCESS_PORT,
    };

    let num_processes = match answers.num_processes {
        Some(n) => n,
        None if distributed => {
            let what = if distributed_type == DistributedType::MultiGpu { "GPU(s)" } else { "processes" };
            let over = if several { ", in total over all machines" } else { "" };
            p.ask_count(
                &format!("How many {what} should be used for distributed training{over}?"),
                num_machines.max(1),
                |n| check_processes(n, num_machines.max(1)),
            )?
        }
        None => 1,
    };

    let gpu_ids = match &answers.gpu_ids {
        Some(ids) => ids.clone(),
        None if distributed_type == DistributedType::MultiGpu => {
            let per_machine = num_processes / num_machines.max(1);
            p.ask(
                "What GPU(s) (by id) should be used for training on this machine as a comma-separated list?",
                Some("all"),
                |a| {
                    let a = if a.is_empty() { "all" } else { a };
                    let ids = parse_gpu_ids(a)?;
                    check_gpu_count(ids.as_deref(), per_machine)?;
                    Ok(gpu_ids_string(ids.as_deref()))
                },
            )?
        }
        None => "all".to_string(),
    };
    // Store `0, 1` as `0,1`; a bad preset is left for validate() to name.
    let gpu_ids = parse_gpu_ids(&gpu_ids).map(|ids| gpu_ids_string(ids.as_deref())).unwrap_or(gpu_ids);

    let launcher = match answers.launcher {
        Some(l) => l,
        None if distributed => {
            let default = if several { Launcher::Mpirun } else { Launcher::InProcess };
            p.choose("How should the ranks be started?", default, |l| {
                if several && l == Launcher::InProcess {
                    Err(format!("in-process runs on one machine only; {num_machines} machines need mpirun or srun"))
                } else {
                    Ok(())
                }
            })?
        }
        None => Launcher::InProcess,
    };

    let hostfile = match &answers.hostfile {
        Some(path) => Some(path.clone()),
        None if launcher == Launcher::Mpirun && p.interactive() => {
            p.ask("What is the path of the hostfile for mpirun (empty for none)?", Some("none"), |a| {
                Ok(if a.is_empty() || a.eq_ignore_ascii_case("none") { None } else { Some(PathBuf::from(a)) })
            })?
        }
        None => None,
    };

    let mixed_precision = match answers.mixed_precision {
        Some(m) => m,
        None => p.choose("Do you wish to use mixed precision?", MixedPrecision::No, |_| Ok(()))?,
    };

    let config = LaunchConfig {
        distributed_type,
        num_machines,
        machine_rank,
        main_process_ip,
        main_process_port,
        num_processes,
        gpu_ids,
        mixed_precision,
        launcher,
        hostfile,
    };
    // What was not asked came from flags or defaults: errors name flags.
    config.validate_from(&Origin::flags())?;
    Ok(config)
}

fn gpu_ids_string(ids: Option<&[u32]>) -> String {
    match ids {
        None => "all".to_string(),
        Some(ids) => ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the questionnaire on `answers`; returns its result and everything it printed.
    fn run(answers: &str) -> (Result<LaunchConfig>, String) {
        let mut output = Vec::new();
        let result = ask(&mut answers.as_bytes(), &mut output);
        (result, String::from_utf8(output).unwrap())
    }

    #[test]
    fn answers_give_the_expected_single_machine_gpu_config() {
        // environment, machine type, machines, processes, GPU ids, launcher, precision
        let (config, _) = run("\n2\n1\n4\n0, 1,2,3\n0\nbf16\n");
        let expected = LaunchConfig {
            distributed_type: DistributedType::MultiGpu,
            num_processes: 4,
            gpu_ids: "0,1,2,3".into(),
            mixed_precision: MixedPrecision::Bf16,
            ..LaunchConfig::default()
        };
        assert_eq!(config.unwrap(), expected);
    }

    #[test]
    fn answers_give_the_expected_multi_machine_config() {
        // environment, type, machines, rank, IP, port, processes, launcher, hostfile, precision
        let (config, out) = run("This machine\nmulti_cpu\n2\n1\n10.0.0.1\n\n8\nmpirun\n/etc/llm-hosts\nFP16\n");
        let expected = LaunchConfig {
            distributed_type: DistributedType::MultiCpu,
            num_machines: 2,
            machine_rank: 1,
            main_process_ip: Some("10.0.0.1".into()),
            num_processes: 8,
            mixed_precision: MixedPrecision::Fp16,
            launcher: Launcher::Mpirun,
            hostfile: Some("/etc/llm-hosts".into()),
            ..LaunchConfig::default()
        };
        assert_eq!(config.unwrap(), expected);
        assert!(out.contains("in total over all machines? [2]: "), "{out}");
        assert!(!out.contains("GPU(s) (by id)"), "multi-CPU asks no GPU ids:\n{out}");
    }

    #[test]
    fn empty_answers_take_the_defaults_shown() {
        let (config, out) = run("\n\n\n");
        assert_eq!(config.unwrap(), LaunchConfig::default());
        assert!(out.contains("Number or name [This machine]: "), "{out}");
        assert!(out.contains("Number or name [No distributed training]: "), "{out}");
        assert!(out.contains("Do you wish to use mixed precision?"), "{out}");
        assert!(!out.contains("How many"), "no distributed training asks no counts:\n{out}");

        // Multi-GPU on one machine: every question after the machine type defaulted.
        let (config, out) = run("\n2\n\n\n\n\n\n");
        let expected = LaunchConfig { distributed_type: DistributedType::MultiGpu, ..LaunchConfig::default() };
        assert_eq!(config.unwrap(), expected);
        assert!(out.contains("comma-separated list? [all]: "), "{out}");
        assert!(out.contains("Number or name [in-process]: "), "{out}");
        assert!(!out.contains("rank of this machine"), "one machine has no rank question:\n{out}");

        // Several machines: the launcher defaults to mpirun, the port to 29500, one process per machine.
        let (config, out) = run("\nmulti-gpu\n3\n\nmain-node\n\n\n\n\n\n\n");
        let config = config.unwrap();
        assert_eq!((config.launcher, config.num_processes, config.main_process_port), (Launcher::Mpirun, 3, 29500));
        assert_eq!(config.hostfile, None);
        assert!(out.contains("Number or name [mpirun]: "), "{out}");
    }

    #[test]
    fn a_bad_answer_is_asked_again_with_a_reason() {
        let (config, out) = run("aws\n\n7\nmulti-gpu\nzero\n0\n1\n-1\n2\n0,0\n1,3\nin-process\nfp8\nbf16\n");
        let config = config.unwrap();
        assert_eq!(config.distributed_type, DistributedType::MultiGpu);
        assert_eq!((config.num_processes, config.gpu_ids.as_str()), (2, "1,3"));
        assert_eq!(config.mixed_precision, MixedPrecision::Bf16);
        // Answers are not echoed, so a reason follows its prompt on the same line.
        let reasons: Vec<&str> =
            out.split("Invalid answer: ").skip(1).map(|s| s.lines().next().unwrap_or_default()).collect();
        assert_eq!(reasons.len(), 7, "{out}");
        assert!(reasons[0].contains("`aws` is not one of the choices"), "{out}");
        assert!(reasons[2].contains("`zero` is not a whole number"), "{out}");
        assert!(reasons[3].contains("at least 1 machine"), "{out}");
        assert!(reasons[5].contains("GPU 0 is listed twice"), "{out}");
        assert_eq!(out.matches("Which type of machine are you using?").count(), 2, "{out}");
    }

    #[test]
    fn answers_that_break_the_combination_are_asked_again() {
        // rank 2 of 2 machines; in-process over 2 machines; 3 processes over 2 machines; 2 GPUs for 2 per machine
        let (config, out) = run("\n2\n2\n2\n1\n10.1.2.3\n29501\n3\n4\n0\n0,1\nin-process\nsrun\n\n");
        let config = config.unwrap();
        assert_eq!(config.machine_rank, 1);
        assert_eq!(config.main_process_port, 29501);
        assert_eq!(config.num_processes, 4);
        assert_eq!(config.launcher, Launcher::Srun);
        assert!(out.contains("Invalid answer: ranks of 2 machines run from 0 to 1"), "{out}");
        assert!(out.contains("does not divide evenly over num_machines 2"), "{out}");
        assert!(out.contains("1 GPU(s) listed but each machine runs 2 processes"), "{out}");
        assert!(out.contains("in-process runs on one machine only"), "{out}");
        assert!(!out.contains("hostfile"), "srun has no hostfile question:\n{out}");
    }

    #[test]
    fn input_ending_early_is_an_error() {
        let (err, _) = run("\n2\n");
        let err = err.unwrap_err().to_string();
        assert!(err.contains("the answers ended before one to \"How many different machines"), "{err}");
        let (err, out) = run("\nbad");
        assert!(out.contains("Invalid answer"), "{out}");
        assert!(matches!(err, Err(LaunchConfigError::InputEnded { .. })));
    }

    #[test]
    fn preset_answers_skip_their_questions() {
        let answers = Answers {
            distributed_type: Some(DistributedType::MultiGpu),
            num_processes: Some(2),
            mixed_precision: Some(MixedPrecision::Fp16),
            ..Answers::default()
        };
        let mut output = Vec::new();
        // environment, machines, GPU ids, launcher
        let config = ask_with(&answers, &mut "\n\n\n\n".as_bytes(), &mut output).unwrap();
        let out = String::from_utf8(output).unwrap();
        assert!(!out.contains("type of machine") && !out.contains("mixed precision"), "{out}");
        assert_eq!((config.num_processes, config.mixed_precision), (2, MixedPrecision::Fp16));
    }

    #[test]
    fn resolve_fills_the_rest_with_the_questionnaire_defaults() {
        let answers = Answers {
            distributed_type: Some(DistributedType::MultiGpu),
            num_machines: Some(2),
            main_process_ip: Some("10.0.0.1".into()),
            ..Answers::default()
        };
        let config = answers.resolve().unwrap();
        assert_eq!((config.launcher, config.num_processes, config.machine_rank), (Launcher::Mpirun, 2, 0));
        assert_eq!(Answers::default().resolve().unwrap(), LaunchConfig::default());

        let err = Answers { machine_rank: Some(3), num_machines: Some(2), ..answers.clone() }.resolve().unwrap_err();
        // Answers come from flags: the errors name the flags.
        assert_eq!(err.to_string(), "--machine-rank 3 must be below --num-machines 2 (ranks count from 0)");
        let err = Answers { main_process_ip: None, ..answers }.resolve().unwrap_err();
        assert_eq!(err.to_string(), "--num-machines 2: --main-process-ip (the address of machine rank 0) is required");
    }

    #[test]
    fn save_then_load_round_trips_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/default_config.toml");
        let config = LaunchConfig {
            distributed_type: DistributedType::MultiCpu,
            num_machines: 2,
            machine_rank: 1,
            main_process_ip: Some("node0".into()),
            main_process_port: 1234,
            num_processes: 4,
            gpu_ids: "all".into(),
            mixed_precision: MixedPrecision::Bf16,
            launcher: Launcher::Mpirun,
            hostfile: Some("hosts".into()),
        };
        config.save(&path).unwrap();
        assert_eq!(LaunchConfig::load(&path).unwrap(), config);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("distributed_type = \"multi-cpu\"\n"), "{text}");
        assert!(text.contains("launcher = \"mpirun\"\n"), "{text}");

        LaunchConfig::default().save(&path).unwrap();
        assert_eq!(LaunchConfig::load(&path).unwrap(), LaunchConfig::default());
        assert!(!std::fs::read_to_string(&path).unwrap().contains("main_process_ip"));
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("default_config.toml")], "temporary file left behind");

        // save refuses what validate refuses, and leaves the old file.
        assert!(LaunchConfig { num_processes: 0, ..LaunchConfig::default() }.save(&path).is_err());
        assert_eq!(LaunchConfig::load(&path).unwrap(), LaunchConfig::default());
    }

    #[test]
    fn absent_keys_take_their_defaults() {
        let config = LaunchConfig::from_toml_str("mixed_precision = \"bf16\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(config, LaunchConfig { mixed_precision: MixedPrecision::Bf16, ..LaunchConfig::default() });
    }

    #[test]
    fn load_errors_name_the_file_the_place_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launch.toml");
        let shown = path.display().to_string();
        let err_of = |text: &str| {
            std::fs::write(&path, text).unwrap();
            LaunchConfig::load(&path).unwrap_err().to_string()
        };

        let err = err_of("num_machines = 1\nnum_procesess = 2\n");
        assert!(err.starts_with(&format!("{shown}:2:1: key `num_procesess`: unknown key")), "{err}");
        assert!(err.contains("`num_processes`"), "expected keys listed: {err}");

        let err = err_of("distributed_type = \"multi-gpu\"\nmixed_precision = \"fp8\"\n");
        assert!(err.starts_with(&format!("{shown}:2:19: key `mixed_precision`: ")), "{err}");
        assert!(err.contains("fp8"), "{err}");

        let err = err_of("num_processes = -2\n");
        assert!(err.starts_with(&format!("{shown}:1:17: key `num_processes`: ")), "{err}");

        let err = err_of("distributed_type = \"multi-gpu\"\nnum_machines = 2\nmachine_rank = 2\n");
        assert!(err.starts_with(&format!("{shown}: machine_rank 2 must be below num_machines 2")), "{err}");

        let missing = dir.path().join("absent.toml");
        let err = LaunchConfig::load(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn validate_names_what_is_wrong() {
        let multi = LaunchConfig {
            distributed_type: DistributedType::MultiGpu,
            num_machines: 2,
            main_process_ip: Some("10.0.0.1".into()),
            num_processes: 4,
            launcher: Launcher::Srun,
            ..LaunchConfig::default()
        };
        multi.validate().unwrap();
        let cases = [
            (LaunchConfig { num_processes: 0, ..LaunchConfig::default() }, "num_processes must be at least 1"),
            (LaunchConfig { num_machines: 0, ..LaunchConfig::default() }, "num_machines must be at least 1"),
            (
                LaunchConfig { num_processes: 2, ..LaunchConfig::default() },
                "num_processes 2 with distributed_type \"no\"",
            ),
            (LaunchConfig { machine_rank: 2, ..multi.clone() }, "machine_rank 2 must be below num_machines 2"),
            (LaunchConfig { main_process_ip: None, ..multi.clone() }, "main_process_ip"),
            (LaunchConfig { main_process_ip: Some(" ".into()), ..multi.clone() }, "main_process_ip: an address"),
            (LaunchConfig { main_process_ip: Some("a,b".into()), ..multi.clone() }, "holds a comma"),
            (LaunchConfig { launcher: Launcher::InProcess, ..multi.clone() }, "launcher \"in-process\""),
            (LaunchConfig { num_processes: 3, ..multi.clone() }, "does not divide evenly"),
            (LaunchConfig { main_process_port: 0, ..multi.clone() }, "main_process_port"),
            (LaunchConfig { gpu_ids: "0,x".into(), ..multi.clone() }, "gpu_ids: `x` is not a GPU id"),
            (LaunchConfig { gpu_ids: "0".into(), ..multi.clone() }, "gpu_ids: 1 GPU(s) listed"),
            (LaunchConfig { hostfile: Some("h".into()), ..multi.clone() }, "hostfile is only used by"),
            (
                LaunchConfig { num_machines: 2, main_process_ip: Some("a".into()), ..LaunchConfig::default() },
                "several machines need multi-cpu or multi-gpu",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "`{needle}` not in `{err}` for {config:?}");
        }
    }

    #[test]
    fn default_path_prefers_the_llmtrain_variable_then_xdg_then_home() {
        let path = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, OsString)> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
            default_path_from(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        };
        let all = [("LLMTRAIN_CONFIG_DIR", "/cfg"), ("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(path(&all).unwrap(), Path::new("/cfg/default_config.toml"));
        assert_eq!(path(&all[1..]).unwrap(), Path::new("/xdg/llmtrain/default_config.toml"));
        assert_eq!(path(&all[2..]).unwrap(), Path::new("/home/u/.config/llmtrain/default_config.toml"));
        let unset_and_relative = [("LLMTRAIN_CONFIG_DIR", ""), ("XDG_CONFIG_HOME", "rel"), ("HOME", "/home/u")];
        assert_eq!(path(&unset_and_relative).unwrap(), Path::new("/home/u/.config/llmtrain/default_config.toml"));
        assert!(matches!(path(&[]), Err(LaunchConfigError::NoConfigDir)));
    }

    #[test]
    fn validate_from_names_flags_and_keys_by_where_they_came_from() {
        let file = LaunchConfig {
            distributed_type: DistributedType::MultiCpu,
            num_machines: 2,
            main_process_ip: Some("node1".into()),
            num_processes: 4,
            launcher: Launcher::Mpirun,
            ..LaunchConfig::default()
        };
        let bad = LaunchConfig { machine_rank: 2, ..file.clone() };
        // Nothing from a file: flags, no path.
        let err = bad.validate_from(&Origin::flags()).unwrap_err().to_string();
        assert_eq!(err, "--machine-rank 2 must be below --num-machines 2 (ranks count from 0)");
        // The rank from a flag, the machine count from the file: both named as given, after the file's path.
        let origin = Origin { file: Some("launch.toml".into()), flags: vec!["machine_rank"] };
        let err = bad.validate_from(&origin).unwrap_err().to_string();
        assert_eq!(err, "launch.toml: --machine-rank 2 must be below num_machines 2 (ranks count from 0)");
        // Only flags named: no path, though a file was read.
        let origin = Origin { file: Some("launch.toml".into()), flags: vec!["num_processes", "num_machines"] };
        let err = LaunchConfig { num_processes: 3, ..file.clone() }.validate_from(&origin).unwrap_err().to_string();
        assert_eq!(
            err,
            "--num-processes 3 does not divide evenly over --num-machines 2 (each machine runs the same number)"
        );
        // Only keys: the file's path and its keys, strings quoted as in the file.
        let origin = Origin { file: Some("launch.toml".into()), flags: vec![] };
        let err = LaunchConfig { launcher: Launcher::Srun, hostfile: Some("h".into()), ..file.clone() }
            .validate_from(&origin)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "launch.toml: hostfile is only used by the mpirun launcher, not by launcher \"srun\"");
        let err = LaunchConfig { launcher: Launcher::InProcess, ..file }.validate_from(&Origin::flags()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--launcher in-process runs on one machine; with --num-machines 2 use mpirun or srun"
        );
    }

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
        assert_eq!(err, "unknown mixed precision `fp8`; expected one of: no, fp16, bf16");
    }
}
