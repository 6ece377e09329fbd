//! How many workers the launcher can place right now: the slots of mpirun's hostfile (read again before every
//! group, so a machine taken out of it is not used by the next one), the tasks of the Slurm allocation, or, for
//! threads and mpirun on this machine alone, as many as asked.

use std::path::{Path, PathBuf};

use llmtrain_accel::Launcher;

use crate::error::{RayError, Result};

/// Where workers can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slots {
    /// No limit the driver can see (threads, or mpirun on this machine).
    Unbounded,
    /// The hostfile's hosts and their slots.
    Hostfile { path: PathBuf, hosts: Vec<(String, usize)> },
    /// The Slurm allocation's tasks and nodes.
    Allocation { tasks: usize, nodes: usize },
}

impl Slots {
    /// The slots `launcher` can place now.
    pub fn find(launcher: Launcher, hostfile: Option<&Path>) -> Result<Self> {
        match (launcher, hostfile) {
            (Launcher::Mpirun, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| RayError::Hostfile {
                    path: path.to_path_buf(),
                    line: 0,
                    message: e.to_string(),
                })?;
                Ok(Slots::Hostfile { path: path.to_path_buf(), hosts: parse_hostfile(&text, path)? })
            }
            (Launcher::Srun, _) => allocation(|name| std::env::var(name).ok()),
            _ => Ok(Slots::Unbounded),
        }
    }

    /// How many workers of `slots_per_worker` slots each fit.
    pub fn workers(&self, slots_per_worker: usize) -> Option<usize> {
        let per = slots_per_worker.max(1);
        match self {
            Slots::Unbounded => None,
            Slots::Hostfile { hosts, .. } => Some(hosts.iter().map(|(_, slots)| slots / per).sum()),
            Slots::Allocation { tasks, .. } => Some(tasks / per),
        }
    }

    /// Machines a group of `workers` spans (srun's `--nodes`).
    pub fn machines(&self, workers: usize) -> usize {
        match self {
            Slots::Allocation { nodes, .. } => (*nodes).clamp(1, workers.max(1)),
            _ => 1,
        }
    }

    /// What holds the slots, for messages.
    pub fn describe(&self) -> String {
        match self {
            Slots::Unbounded => "this machine".to_string(),
            Slots::Hostfile { path, .. } => format!("the hostfile {}", path.display()),
            Slots::Allocation { tasks, nodes } => format!("the Slurm allocation ({tasks} task(s) on {nodes} node(s))"),
        }
    }
}

/// Open MPI's hostfile: `host [slots=N] [max_slots=M]` per line, `#` comments; a host without `slots` has one.
pub fn parse_hostfile(text: &str, path: &Path) -> Result<Vec<(String, usize)>> {
    let mut hosts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let bad = |message: String| RayError::Hostfile { path: path.to_path_buf(), line: index + 1, message };
        let line = line.split('#').next().unwrap_or_default().trim();
        let mut words = line.split_whitespace();
        let Some(host) = words.next() else { continue };
        if host.contains('=') {
            return Err(bad(format!("`{host}`: a line starts with a host name")));
        }
        let mut slots = 1;
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| bad(format!("`{word}`: expected key=value")))?;
            let number = || value.parse::<usize>().map_err(|_| bad(format!("`{word}`: {key} must be a whole number")));
            match key {
                "slots" | "cpu" | "count" => slots = number()?,
                "max_slots" | "max-slots" => {
                    number()?;
                }
                _ => return Err(bad(format!("`{word}`: unknown key `{key}`; supported: slots, max_slots"))),
            }
        }
        hosts.push((host.to_string(), slots));
    }
    if hosts.is_empty() {
        return Err(RayError::Hostfile { path: path.to_path_buf(), line: 0, message: "names no host".into() });
    }
    Ok(hosts)
}

/// The Slurm allocation this process runs in, from its environment (`var` reads a variable).
fn allocation(var: impl Fn(&str) -> Option<String>) -> Result<Slots> {
    if var("SLURM_JOB_ID").is_none() {
        return Err(RayError::NoAllocation);
    }
    let number = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
    let nodes = number("SLURM_JOB_NUM_NODES").or_else(|| number("SLURM_NNODES")).unwrap_or(1);
    let tasks =
        number("SLURM_NTASKS").or_else(|| number("SLURM_NTASKS_PER_NODE").map(|per| per * nodes)).unwrap_or(nodes);
    Ok(Slots::Allocation { tasks, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_slots_add_up() {
        let text = "# cluster\nnode1 slots=2\nnode2 slots=4 max_slots=8\n\nnode3\n";
        let hosts = parse_hostfile(text, Path::new("hosts")).unwrap();
        assert_eq!(hosts, vec![("node1".into(), 2), ("node2".into(), 4), ("node3".into(), 1)]);
        let slots = Slots::Hostfile { path: "hosts".into(), hosts };
        assert_eq!(slots.workers(1), Some(7));
        assert_eq!(slots.workers(2), Some(3));
    }

    #[test]
    fn a_hostfile_that_does_not_parse_names_its_line() {
        let err = parse_hostfile("node1 slots=2\nnode2 slots=two\n", Path::new("hosts")).unwrap_err();
        assert_eq!(err.to_string(), "hosts:2: `slots=two`: slots must be a whole number");
        let err = parse_hostfile("node1 gpus=2\n", Path::new("hosts")).unwrap_err();
        assert!(err.to_string().starts_with("hosts:1: `gpus=2`: unknown key"), "{err}");
        assert_eq!(parse_hostfile("# nothing\n", Path::new("h")).unwrap_err().to_string(), "h: names no host");
    }

    #[test]
    fn srun_needs_an_allocation() {
        assert!(matches!(allocation(|_| None), Err(RayError::NoAllocation)));
        let env = |name: &str| match name {
            "SLURM_JOB_ID" => Some("7".to_string()),
            "SLURM_JOB_NUM_NODES" => Some("2".to_string()),
            "SLURM_NTASKS" => Some("8".to_string()),
            _ => None,
        };
        let slots = allocation(env).unwrap();
        assert_eq!(slots, Slots::Allocation { tasks: 8, nodes: 2 });
        assert_eq!(slots.workers(1), Some(8));
        assert_eq!(slots.machines(1), 1);
    }
}
