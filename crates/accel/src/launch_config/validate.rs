//! Checking that a launch config describes a launch that can work, with messages that name each setting the
//! way the user gave it (a key of the file or a flag), and the checks of single answers the questionnaire of
//! `llmtrain config` reuses.

use std::cell::Cell;
use std::fmt;
use std::path::PathBuf;

use super::{DistributedType, LaunchConfig, LaunchConfigError, Launcher, Result};

impl LaunchConfig {
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

/// An address for `main_process_ip`: not empty, without spaces or commas.
pub fn check_address(ip: &str) -> std::result::Result<(), String> {
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

/// A process count for `num_machines` machines: at least 1, and the same number on each machine.
pub fn check_processes(num_processes: usize, num_machines: usize) -> std::result::Result<(), String> {
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

/// The GPU ids of a `gpu_ids` value: `all` is `None`; otherwise distinct ids separated by commas.
pub fn parse_gpu_ids(s: &str) -> std::result::Result<Option<Vec<u32>>, String> {
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

/// Enough GPU ids (`None`: all of them) for `per_machine` processes, one per GPU.
pub fn check_gpu_count(ids: Option<&[u32]>, per_machine: usize) -> std::result::Result<(), String> {
    match ids {
        Some(ids) if ids.len() < per_machine => {
            Err(format!("{} GPU(s) listed but each machine runs {per_machine} processes, one per GPU", ids.len()))
        }
        _ => Ok(()),
    }
}

/// The `gpu_ids` value of parsed ids: `all` for `None`, else the ids joined by commas (`0, 1` is written `0,1`).
pub fn gpu_ids_string(ids: Option<&[u32]>) -> String {
    match ids {
        None => "all".to_string(),
        Some(ids) => ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
