//! Starting the ranks of a job: as threads of this process, or as processes under `mpirun` / `srun`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use llmtrain_core::dist::{Communicator, DistError, InProcess};

use crate::error::{AccelError, Result};
use crate::launch_config::{LaunchConfig, Launcher};

/// Stack size of a rank's thread: the model's forward and backward recurse deeper than the 2 MiB default allows.
const RANK_STACK_BYTES: usize = 64 << 20;

/// Runs `body` once per rank, each on its own thread with its own communicator, and returns the ranks' results
/// in rank order. A rank that fails (error or panic) aborts the group, so the others stop at their next
/// collective instead of waiting; the error names the rank that failed first and why.
pub fn run_in_process<T, E, F>(world: usize, body: F) -> Result<Vec<T>>
where
    T: Send,
    E: std::fmt::Display,
    F: Fn(Box<dyn Communicator>) -> Result<T, E> + Sync,
{
    if world == 0 {
        return Err(AccelError::Launch("--num-processes must be at least 1".into()));
    }
    let ranks: Vec<Arc<InProcess>> = InProcess::group(world).into_iter().map(Arc::new).collect();
    let first_failure: OnceLock<(usize, String)> = OnceLock::new();
    let outcomes: Vec<Option<T>> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(world);
        for (rank, comm) in ranks.iter().enumerate() {
            let (body, first_failure) = (&body, &first_failure);
            let spawned = std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .stack_size(RANK_STACK_BYTES)
                .spawn_scoped(scope, move || {
                    let handle: Box<dyn Communicator> = Box::new(SharedRank(comm.clone()));
                    let reason = match catch_unwind(AssertUnwindSafe(|| body(handle))) {
                        Ok(Ok(value)) => return Some(value),
                        Ok(Err(err)) => err.to_string(),
                        Err(panic) => panic_message(panic.as_ref()),
                    };
                    // The first failure is the cause; later ones are ranks stopping because of it.
                    let _ = first_failure.set((rank, reason.clone()));
                    comm.abort(&reason);
                    None
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(err) => {
                    let reason = format!("cannot start a thread: {err}");
                    let _ = first_failure.set((rank, reason.clone()));
                    comm.abort(&reason);
                }
            }
        }
        handles.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    // The group records the first abort, which is the cause: a rank may abort the group itself before returning
    // its error, and the ranks it released then fail too, racing it to `first_failure`.
    if let Some(cause) = ranks.first().and_then(|comm| comm.failure()) {
        return Err(AccelError::Dist(cause));
    }
    if let Some((rank, reason)) = first_failure.into_inner() {
        return Err(AccelError::Dist(DistError::PeerFailed { rank, reason }));
    }
    outcomes
        .into_iter()
        .collect::<Option<Vec<T>>>()
        .ok_or_else(|| AccelError::Launch("a rank stopped without a result".into()))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
    format!("panicked: {}", text.unwrap_or_else(|| "(no message)".into()))
}

/// A rank's communicator shared between its thread (which trains) and the launcher (which aborts the group
/// when the thread fails).
struct SharedRank(Arc<InProcess>);

impl Communicator for SharedRank {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        self.0.all_reduce_sum(data)
    }
    fn reduce_scatter_sum(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        self.0.reduce_scatter_sum(data)
    }
    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        self.0.all_gather(data)
    }
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), DistError> {
        self.0.broadcast(data, root)
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.0.barrier()
    }
    fn abort(&self, reason: &str) {
        self.0.abort(reason)
    }
}

/// The command line that starts `program args...` as the job's ranks under `mpirun` or `srun`. With a main
/// address, the ranks get it and the port as `MASTER_ADDR` / `MASTER_PORT` (torch.distributed's names): `-x` for
/// mpirun, `--export=ALL,...` for srun.
pub fn process_launch_command(config: &LaunchConfig, program: &Path, args: &[String]) -> Result<Vec<String>> {
    let main = config
        .main_process_ip
        .as_ref()
        .map(|ip| [format!("MASTER_ADDR={ip}"), format!("MASTER_PORT={}", config.main_process_port)]);
    let mut line: Vec<String> = match config.launcher {
        Launcher::Mpirun => {
            let mut line = vec!["mpirun".to_string(), "-np".into(), config.num_processes.to_string()];
            if let Some(hostfile) = &config.hostfile {
                line.extend(["--hostfile".into(), hostfile.display().to_string()]);
            } else if config.num_machines == 1 {
                // One machine: allow more ranks than cores (Open MPI refuses by default).
                line.push("--oversubscribe".into());
            }
            // Ranks of one machine each get a share of its cores instead of being pinned to one core.
            line.extend(["--bind-to".into(), "none".into()]);
            for var in main.into_iter().flatten() {
                line.extend(["-x".into(), var]);
            }
            line
        }
        Launcher::Srun => {
            let mut line = vec![
                "srun".to_string(),
                format!("--ntasks={}", config.num_processes),
                format!("--nodes={}", config.num_machines),
                // A rank that exits with an error ends the step instead of leaving the others waiting.
                "--kill-on-bad-exit=1".to_string(),
            ];
            if let Some([addr, port]) = main {
                // `ALL` keeps the rest of the environment, which srun passes by default.
                line.push(format!("--export=ALL,{addr},{port}"));
            }
            line
        }
        Launcher::InProcess => {
            return Err(AccelError::Launch("the in-process launcher starts no processes".into()));
        }
    };
    line.push(program.display().to_string());
    line.extend(args.iter().cloned());
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch_config::DistributedType;

    fn line(config: &LaunchConfig) -> String {
        process_launch_command(config, Path::new("/bin/llmtrain"), &["train".into()]).unwrap().join(" ")
    }

    #[test]
    fn the_main_address_and_port_reach_the_ranks() {
        let two_machines = LaunchConfig {
            distributed_type: DistributedType::MultiCpu,
            num_machines: 2,
            main_process_ip: Some("node1".into()),
            main_process_port: 29501,
            num_processes: 4,
            launcher: Launcher::Mpirun,
            hostfile: Some("hosts".into()),
            ..LaunchConfig::default()
        };
        assert_eq!(
            line(&two_machines),
            "mpirun -np 4 --hostfile hosts --bind-to none -x MASTER_ADDR=node1 -x MASTER_PORT=29501 /bin/llmtrain train"
        );
        let srun = LaunchConfig { launcher: Launcher::Srun, hostfile: None, ..two_machines };
        assert_eq!(
            line(&srun),
            "srun --ntasks=4 --nodes=2 --kill-on-bad-exit=1 --export=ALL,MASTER_ADDR=node1,MASTER_PORT=29501 \
             /bin/llmtrain train"
        );
        // No address (one machine): nothing to pass.
        let one = LaunchConfig { num_machines: 1, main_process_ip: None, ..srun };
        assert_eq!(line(&one), "srun --ntasks=4 --nodes=1 --kill-on-bad-exit=1 /bin/llmtrain train");
        let one = LaunchConfig { launcher: Launcher::Mpirun, ..one };
        assert_eq!(line(&one), "mpirun -np 4 --oversubscribe --bind-to none /bin/llmtrain train");
    }
}
