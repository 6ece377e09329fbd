//! Ray's `get_context()`: where a worker process sits in its group, from its launcher's environment (Open MPI's,
//! Slurm's, PMI's or torch.distributed's names). Thread workers share one process: their place is their
//! communicator's rank.

/// A worker's place: its rank among all workers and on its machine, its machine's rank, and the group's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainContext {
    pub world_rank: usize,
    pub local_rank: usize,
    pub node_rank: usize,
    pub world_size: usize,
}

impl TrainContext {
    /// The context of one process alone.
    pub const ALONE: TrainContext = TrainContext { world_rank: 0, local_rank: 0, node_rank: 0, world_size: 1 };

    /// This process's context, as its launcher tells it.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The context `var` (an environment lookup) tells: the first of each name list that is set.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: &[&str]| names.iter().find_map(|name| var(name)?.trim().parse::<usize>().ok());
        let world_rank = first(&["OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMI_RANK", "RANK"]).unwrap_or(0);
        let world_size = first(&["OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "PMI_SIZE", "WORLD_SIZE"]).unwrap_or(1);
        let local_rank =
            first(&["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "LOCAL_RANK"])
                .unwrap_or(0);
        let node_rank = first(&["OMPI_COMM_WORLD_NODE_RANK", "SLURM_NODEID", "NODE_RANK"]).unwrap_or(0);
        TrainContext { world_rank, local_rank, node_rank, world_size: world_size.max(world_rank + 1) }
    }
}

/// The context of the process (Ray's `ray.train.get_context()`).
pub fn get_context() -> TrainContext {
    TrainContext::from_env()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launchers_names_give_the_context() {
        let ompi = |name: &str| {
            let value = match name {
                "OMPI_COMM_WORLD_RANK" => "3",
                "OMPI_COMM_WORLD_SIZE" => "4",
                "OMPI_COMM_WORLD_LOCAL_RANK" => "1",
                "OMPI_COMM_WORLD_NODE_RANK" => "1",
                _ => return None,
            };
            Some(value.to_string())
        };
        let expected = TrainContext { world_rank: 3, local_rank: 1, node_rank: 1, world_size: 4 };
        assert_eq!(TrainContext::from_vars(ompi), expected);
        let slurm = |name: &str| {
            let value = match name {
                "SLURM_PROCID" => "3",
                "SLURM_NTASKS" => "4",
                "SLURM_LOCALID" => "1",
                "SLURM_NODEID" => "1",
                _ => return None,
            };
            Some(value.to_string())
        };
        assert_eq!(TrainContext::from_vars(slurm), expected);
        assert_eq!(TrainContext::from_vars(|_| None), TrainContext::ALONE);
    }
}
