//! One worker group's life as processes: the launcher's command line started, its errors passed through and read
//! for the worker that failed first, its end told apart (finished, a worker failed, stopped by a signal). The
//! group is tied to the driver: if the driver dies, the launcher gets SIGTERM, so its workers checkpoint and stop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmtrain_core::interrupt::{GracefulStop, SIGINT, SIGTERM, exit_code, stop_requested};

use crate::error::{RayError, Result};

/// How often the driver looks at its group.
const POLL: Duration = Duration::from_millis(50);

/// How a group ended.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupExit {
    /// Every worker finished the run.
    Finished,
    /// A worker exited abnormally; the launcher stopped the others.
    Failed(WorkerFailure),
    /// Stopped by SIGINT/SIGTERM after checkpointing (the driver's, passed on, or the workers' own).
    Interrupted(i32),
}

/// The worker that failed first, as far as the launcher says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailure {
    pub rank: Option<usize>,
    pub node: Option<String>,
    pub how: Exit,
}

/// How a worker (or, when no worker is named, the launcher) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Signal(i32),
    Code(i32),
    /// A worker of this process (a thread) returned this error or panicked.
    Error(String),
}

impl std::fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.rank, &self.node) {
            (Some(rank), Some(node)) => write!(f, "worker rank {rank} (node {node}) ")?,
            (Some(rank), None) => write!(f, "worker rank {rank} ")?,
            (None, _) => write!(f, "the worker group ")?,
        }
        match &self.how {
            Exit::Signal(signal) => write!(f, "was killed by signal {signal} ({})", signal_name(*signal)),
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Error(reason) => write!(f, "failed: {}", reason.replace('\n', " ")),
        }
    }
}

impl WorkerFailure {
    /// The exit as a word or two for records: `signal 9 (SIGKILL)`, `code 1`, or the error.
    pub fn exit_text(&self) -> String {
        match &self.how {
            Exit::Signal(signal) => format!("signal {signal} ({})", signal_name(*signal)),
            Exit::Code(code) => format!("code {code}"),
            Exit::Error(reason) => reason.replace('\n', " "),
        }
    }
}

/// A signal's name, for the signals a worker dies of.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Runs `line` (the launcher and its arguments) as one worker group and waits for it to end. Its stderr is passed
/// through while it is read for the launcher's report of the first worker that failed. A SIGINT/SIGTERM the
/// driver receives is passed on as SIGTERM, so the workers checkpoint their step and stop.
pub fn run_process_group(line: &[String]) -> Result<GroupExit> {
    let (program, args) = line.split_first().ok_or_else(|| RayError::Launch("an empty command line".into()))?;
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
    let driver = std::process::id();
    // SAFETY: setpgid, prctl, getppid and _exit are async-signal-safe and touch only the child being set up.
    unsafe {
        command.pre_exec(move || {
            // Its own process group: a terminal's Ctrl-C reaches the driver alone, which passes on one signal.
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The driver may have died before prctl took effect.
            if libc::getppid() as u32 != driver {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    // A signal to the driver now waits for the group to checkpoint and stop (passed on below), instead of ending
    // the driver at once; a second one still does.
    let _graceful = GracefulStop::enter_quietly();
    let mut child = command.spawn().map_err(|e| RayError::Launch(format!("starting {program}: {e}")))?;
    let reported: Arc<Mutex<Option<WorkerFailure>>> = Arc::default();
    let reader = child.stderr.take().map(|stderr| {
        let reported = reported.clone();
        std::thread::spawn(move || {
            // Drained to the end whatever it holds (a launcher blocked on a full pipe would hang the group).
            let (mut stderr, mut line, mut pending_rank) = (BufReader::new(stderr), Vec::new(), None);
            while stderr.read_until(b'\n', &mut line).is_ok_and(|read| read > 0) {
                let _ = std::io::stderr().write_all(&line);
                if let Ok(mut first) = reported.lock()
                    && first.is_none()
                {
                    *first = read_failure(String::from_utf8_lossy(&line).trim_end(), &mut pending_rank);
                }
                line.clear();
            }
        })
    });
    let mut forwarded = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(RayError::Launch(format!("waiting for {program}: {e}"))),
        }
        if let (Some(signal), None) = (stop_requested(), forwarded) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            forwarded = Some(signal);
        }
        std::thread::sleep(POLL);
    };
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    if status.success() {
        return Ok(GroupExit::Finished);
    }
    let signal_codes = [SIGINT, SIGTERM].map(exit_code);
    if let Some(signal) = forwarded {
        return Ok(GroupExit::Interrupted(signal));
    }
    if let Some(code) = status.code().filter(|code| signal_codes.contains(code))
        && reported.lock().map(|r| r.is_none()).unwrap_or(true)
    {
        // The workers stopped on a signal of their own after checkpointing (rank 0 said so).
        return Ok(GroupExit::Interrupted(code - 128));
    }
    let named = reported.lock().ok().and_then(|mut r| r.take());
    let how = match (status.signal(), status.code()) {
        (Some(signal), _) => Exit::Signal(signal),
        (None, Some(code)) => Exit::Code(code),
        (None, None) => Exit::Code(-1),
    };
    Ok(GroupExit::Failed(named.unwrap_or(WorkerFailure { rank: None, node: None, how })))
}

/// The failed worker a launcher's line names, if it names one: Open MPI's `process rank R ... on node N exited on
/// signal S`, its `Process name: [[job,1],R]` followed by `Exit code: C`, `MPI_ABORT was invoked on rank R`, and
/// srun's `task R: Killed` / `task R: Exited with exit code C`. `pending_rank` carries a rank to the next line.
pub fn read_failure(line: &str, pending_rank: &mut Option<usize>) -> Option<WorkerFailure> {
    let number_after = |text: &str, marker: &str| -> Option<i64> {
        let rest = &text[text.find(marker)? + marker.len()..];
        let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
        digits.parse().ok()
    };
    let rank_after = |marker: &str| number_after(line, marker).and_then(|r| usize::try_from(r).ok());
    if line.contains("exited on signal") {
        let rank = rank_after("process rank ");
        let node = line.split(" on node ").nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_string);
        let signal = number_after(line, "exited on signal ")?;
        return Some(WorkerFailure { rank, node, how: Exit::Signal(signal as i32) });
    }
    if line.contains("Process name:") {
        *pending_rank = line.rsplit(',').next().and_then(|tail| tail.trim_end_matches(']').trim().parse().ok());
        return None;
    }
    if line.trim_start().starts_with("Exit code:")
        && let Some(rank) = pending_rank.take()
    {
        let code = number_after(line, "Exit code:")?;
        return Some(WorkerFailure { rank: Some(rank), node: None, how: Exit::Code(code as i32) });
    }
    if line.contains("MPI_ABORT was invoked on rank") {
        let code = number_after(line, "errorcode").unwrap_or(1);
        let rank = rank_after("invoked on rank ");
        return Some(WorkerFailure { rank, node: None, how: Exit::Code(code as i32) });
    }
    if line.starts_with("srun: error:") && line.contains(": task ") {
        let rank = rank_after(": task ");
        let node = line.trim_start_matches("srun: error:").split(':').next().map(|n| n.trim().to_string());
        let how = if line.ends_with("Killed") {
            Exit::Signal(libc::SIGKILL)
        } else if let Some(code) = number_after(line, "exit code") {
            Exit::Code(code as i32)
        } else if let Some(signal) = number_after(line, "signal") {
            Exit::Signal(signal as i32)
        } else {
            return None;
        };
        return Some(WorkerFailure { rank, node, how });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str]) -> Option<WorkerFailure> {
        let mut pending = None;
        lines.iter().find_map(|line| read_failure(line, &mut pending))
    }

    #[test]
    fn the_launchers_reports_name_the_worker() {
        let killed = read(&["mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed)."]);
        let expected = WorkerFailure { rank: Some(1), node: Some("vm".into()), how: Exit::Signal(9) };
        assert_eq!(killed, Some(expected.clone()));
        assert_eq!(expected.to_string(), "worker rank 1 (node vm) was killed by signal 9 (SIGKILL)");
        let code = read(&["  Process name: [[39721,1],0]", "  Exit code:    3"]).unwrap();
        assert_eq!(code.to_string(), "worker rank 0 exited with code 3");
        let abort = read(&["MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD", "with errorcode 1."]);
        assert_eq!(abort.unwrap().rank, Some(1));
        let srun = read(&["srun: error: node7: task 3: Killed"]).unwrap();
        assert_eq!(srun.to_string(), "worker rank 3 (node node7) was killed by signal 9 (SIGKILL)");
        let srun = read(&["srun: error: node7: task 2: Exited with exit code 2"]).unwrap();
        assert_eq!(srun.how, Exit::Code(2));
        assert_eq!(read(&["loss 2.3", "srun: error: something else"]), None);
    }

    #[test]
    fn a_group_that_dies_is_told_from_one_that_finishes() {
        let sh = |script: &str| vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        assert_eq!(run_process_group(&sh("exit 0")).unwrap(), GroupExit::Finished);
        let failed = run_process_group(&sh("kill -9 $$")).unwrap();
        assert_eq!(failed, GroupExit::Failed(WorkerFailure { rank: None, node: None, how: Exit::Signal(9) }));
        let named = run_process_group(&sh(
            "echo 'mpirun noticed that process rank 1 with PID 0 on node n1 exited on signal 9 (Killed).' >&2; exit 137",
        ))
        .unwrap();
        assert!(matches!(named, GroupExit::Failed(WorkerFailure { rank: Some(1), .. })), "{named:?}");
    }
}
