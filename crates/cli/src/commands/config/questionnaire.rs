//! The questionnaire of `llmtrain config`: what `accelerate config` asks, one question a line, each with its
//! default; or, for `--non-interactive`, the same answers taken without asking. The launch config it gives, and
//! the checks it reuses, are `llmtrain_accel::launch_config`'s.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use llmtrain_accel::launch_config::{
    Choice, ComputeEnvironment, DEFAULT_MAIN_PROCESS_PORT, DistributedType, LaunchConfig, LaunchConfigError, Launcher,
    MixedPrecision, Origin, check_address, check_gpu_count, check_processes, gpu_ids_string, normalize_name,
    parse_gpu_ids,
};

/// What goes wrong asking: the answers end early, the terminal fails, or the answers give a launch that cannot
/// work. Each is one line.
#[derive(Debug, thiserror::Error)]
pub enum QuestionnaireError {
    #[error("the answers ended before one to \"{question}\"")]
    InputEnded { question: String },

    #[error("cannot ask: {0}")]
    Prompt(std::io::Error),

    #[error(transparent)]
    Config(#[from] LaunchConfigError),
}

type Result<T> = std::result::Result<T, QuestionnaireError>;

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

/// Asks what `accelerate config` asks, on `output`, reading one answer a line from `input`, skipping the questions
/// `answers` already answers. Every question shows its default in brackets and an empty answer takes it; an invalid
/// answer is asked again with the reason; the input ending before the last answer is an error.
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
            return parse("").map_err(|reason| LaunchConfigError::Invalid(format!("{question} {reason}")).into());
        };
        let prompt = match default_shown {
            Some(default) => format!("{question} [{default}]: "),
            None => format!("{question} "),
        };
        loop {
            output.write_all(prompt.as_bytes()).and_then(|()| output.flush()).map_err(QuestionnaireError::Prompt)?;
            let mut line = String::new();
            if input.read_line(&mut line).map_err(QuestionnaireError::Prompt)? == 0 {
                // Close the open prompt line so whatever reports the error starts a line of its own.
                let _ = writeln!(output);
                let question = question.lines().next().unwrap_or(question).to_string();
                return Err(QuestionnaireError::InputEnded { question });
            }
            match parse(line.trim()) {
                Ok(value) => return Ok(value),
                Err(reason) => writeln!(output, "Invalid answer: {reason}").map_err(QuestionnaireError::Prompt)?,
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
                let wanted = normalize_name(answer);
                T::ALL.iter().copied().find(|c| {
                    normalize_name(c.name()) == wanted
                        || normalize_name(c.label()) == wanted
                        || normalize_name(c.label().split(" (").next().unwrap_or_default()) == wanted
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the questionnaire on `answers`; returns its result and everything it printed.
    fn run(answers: &str) -> (Result<LaunchConfig>, String) {
        let mut output = Vec::new();
        let result = ask_with(&Answers::default(), &mut answers.as_bytes(), &mut output);
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
        assert!(matches!(err, Err(QuestionnaireError::InputEnded { .. })));
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
}
