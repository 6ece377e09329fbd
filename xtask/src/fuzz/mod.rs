//! `cargo xtask fuzz [--seconds N] [--target NAME ...] [--seed S]`: mutation fuzzing of every parser of
//! user-supplied files, on stable Rust (see [`mutate`] for why not cargo-fuzz).
//!
//! Each target starts from valid files of its format, mutates them, and runs each input through the entry point
//! the `llmtrain` binary uses ([`targets`]). Every input must end in a value or a one-line error. Findings: a
//! panic (caught, keyed by where it panicked), a multi-line error, an allocation over `--max-alloc-mb` (the
//! input is saved before the process aborts) and an input running past `--timeout` (saved, then the process
//! exits). Each distinct finding's input is shrunk and saved as `target/fuzz/<target>/crash-<n>` with a
//! `crash-<n>.txt` saying what happened; `--replay FILE` runs saved inputs again with the panic shown.
//!
//! Without coverage feedback the corpus grows by outcome instead: an input whose outcome (its error message
//! with numbers and quoted values blanked, or for a value the set of the format's keys it uses) was not seen yet
//! joins the corpus, so mutations build on inputs that got somewhere new.

mod guard;
mod mutate;
mod targets;

pub use guard::CappedAlloc;

use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use mutate::{Rng, mutate};
use targets::{Runner, TARGETS, Target};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Only these targets (default: all): run-config, ds-config, jsonl-rows, parquet-rows, safetensors-header,
    /// tokenizer-json, adapter-config, config-json.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// Seed of the mutations; the same seed and input count give the same inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop each target after this many inputs (or at --seconds, whichever comes first).
    #[arg(long, value_name = "N")]
    pub inputs: Option<u64>,
    /// An input running longer than this many seconds is a hang.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// One allocation larger than this many MiB is a finding (inputs are a few KiB).
    #[arg(long, default_value_t = 1024)]
    pub max_alloc_mb: usize,
    /// Run these saved inputs through the one --target instead of fuzzing, showing any panic.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub replay: Vec<PathBuf>,
}

/// What one target ran and found.
pub struct Report {
    pub target: &'static str,
    pub inputs: u64,
    /// Inputs that ended in a value (the rest in a one-line error, or a finding).
    pub values: u64,
    pub corpus: usize,
    pub findings: Vec<Finding>,
}

/// One distinct finding: what happened, how many inputs did it, and the saved (shrunk) input.
pub struct Finding {
    pub kind: &'static str,
    pub what: String,
    pub count: u64,
    pub saved: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let selected = select(&args.targets)?;
    if !args.replay.is_empty() {
        let [target] = selected.as_slice() else { bail!("--replay needs exactly one --target") };
        return replay(target, &args.replay);
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz");
    let options = Options {
        budget: Duration::from_secs(args.seconds),
        max_inputs: args.inputs.unwrap_or(u64::MAX),
        seed: args.seed,
        timeout: Duration::from_secs(args.timeout),
        max_alloc: args.max_alloc_mb.saturating_mul(1 << 20),
    };
    let mut reports = Vec::new();
    for target in selected {
        let report = fuzz(target, &options, &out.join(target.name))?;
        print_report(&report);
        reports.push(report);
    }
    println!("\n{:<20} {:>9} {:>9} {:>7} {:>9}", "target", "inputs", "values", "corpus", "findings");
    for r in &reports {
        println!("{:<20} {:>9} {:>9} {:>7} {:>9}", r.target, r.inputs, r.values, r.corpus, r.findings.len());
    }
    let found: usize = reports.iter().map(|r| r.findings.len()).sum();
    if found > 0 {
        bail!("{found} finding(s); inputs saved under {}", out.display());
    }
    Ok(())
}

fn select(names: &[String]) -> Result<Vec<&'static Target>> {
    if names.is_empty() {
        return Ok(TARGETS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            TARGETS.iter().find(|t| t.name == name).ok_or_else(|| {
                let all: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                anyhow::anyhow!("no fuzz target `{name}`; targets: {}", all.join(", "))
            })
        })
        .collect()
}

pub struct Options {
    pub budget: Duration,
    pub max_inputs: u64,
    pub seed: u64,
    pub timeout: Duration,
    pub max_alloc: usize,
}

/// How one input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Value,
    Error(String),
    /// Where it panicked (`file:line:col`) and the message.
    Panic {
        at: String,
        message: String,
    },
}

impl Outcome {
    /// The finding this outcome is, keyed so that one bug counts once; `None` for a value or one-line error.
    fn finding(&self, refused_alloc: bool) -> Option<(&'static str, String)> {
        match self {
            _ if refused_alloc => Some(("allocation over the cap", "see the backtrace printed above".into())),
            Outcome::Panic { at, message } => Some(("panic", format!("{at}: {}", first_line(message)))),
            Outcome::Error(message) if message.trim_end().contains('\n') => {
                Some(("multi-line error", first_line(message).to_string()))
            }
            _ => None,
        }
    }

    /// The finding's identity: where a panic happened, the kind otherwise.
    fn key(&self, refused_alloc: bool) -> Option<String> {
        match self {
            _ if refused_alloc => Some("alloc".into()),
            Outcome::Panic { at, .. } => Some(format!("panic {at}")),
            Outcome::Error(m) if m.trim_end().contains('\n') => Some(format!("lines {}", signature(first_line(m)))),
            _ => None,
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// The last panic's location and message, set by the hook [`fuzz`] installs (from any thread: a panic on a
/// worker thread reaches the caller without its location).
static LAST_PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);

/// Runs one input, catching a panic.
fn run_one(runner: &mut Runner, input: &[u8]) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| runner(input))) {
        Ok(Ok(())) => Outcome::Value,
        Ok(Err(message)) => Outcome::Error(message),
        Err(_) => {
            let (at, message) = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
            Outcome::Panic { at, message }
        }
    }
}

/// An error message with what varies per input blanked: numbers, and quoted, back-quoted or bracketed text.
fn signature(message: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                out.push(c);
            }
            Some(_) => {}
            None if matches!(c, '`' | '"' | '\'' | '[') => {
                quote = Some(if c == '[' { ']' } else { c });
                out.push(c);
            }
            None if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            None => out.push(c),
        }
    }
    out.chars().take(120).collect()
}

pub fn fuzz(target: &Target, options: &Options, out: &Path) -> Result<Report> {
    let mut runner = (target.setup)()?;
    let seeds = (target.seeds)()?;
    if seeds.is_empty() {
        bail!("{}: no seed inputs", target.name);
    }
    std::fs::create_dir_all(out)?;
    for entry in std::fs::read_dir(out)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("crash-") || name.ends_with("-input") {
            std::fs::remove_file(entry.path())?;
        }
    }
    let _armed = Armed::new(target, options, out);
    // The seeds are valid files: one that fails means the target is wired wrong, not a finding.
    for (i, seed) in seeds.iter().enumerate() {
        match run_one(&mut runner, seed) {
            Outcome::Value => {}
            other => bail!("{}: seed {i} does not load: {other:?}", target.name),
        }
    }
    let dict: Vec<&str> = target.dict.split_whitespace().collect();
    let max_len = seeds.iter().map(Vec::len).max().unwrap_or(0) * 2 + 4096;
    let mut corpus = seeds.clone();
    let mut seen: HashSet<String> = HashSet::new();
    let mut findings: BTreeMap<String, Finding> = BTreeMap::new();
    let mut rng = Rng::new(options.seed ^ name_hash(target.name));
    let started = Instant::now();
    let mut inputs = 0u64;
    let mut values = 0u64;
    while inputs < options.max_inputs && started.elapsed() < options.budget {
        let base = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, target.layout, base, other, &dict, max_len);
        guard::begin(&input);
        let outcome = run_one(&mut runner, &input);
        let refused = guard::end();
        inputs += 1;
        if let (Some(key), Some((kind, what))) = (outcome.key(refused), outcome.finding(refused)) {
            match findings.get_mut(&key) {
                Some(finding) => finding.count += 1,
                None => {
                    let n = findings.len() + 1;
                    let small = shrink(&mut runner, &input, &key, refused);
                    let saved = out.join(format!("crash-{n}"));
                    std::fs::write(&saved, &small)?;
                    std::fs::write(out.join(format!("crash-{n}.txt")), format!("{kind}: {what}\n"))?;
                    findings.insert(key, Finding { kind, what, count: 1, saved });
                }
            }
            continue;
        }
        let signature = match &outcome {
            Outcome::Error(message) => signature(message),
            _ => {
                values += 1;
                // A valid input is new when it uses a new set of the format's keys (a section, a row format).
                let used: Vec<&str> = dict.iter().copied().filter(|w| contains(&input, w.as_bytes())).collect();
                format!("value {}", used.join(" "))
            }
        };
        if seen.len() < 100_000 && seen.insert(signature) {
            if corpus.len() < 2_000 {
                corpus.push(input);
            } else {
                let slot = seeds.len() + rng.below(corpus.len() - seeds.len());
                corpus[slot] = input;
            }
        }
    }
    Ok(Report { target: target.name, inputs, values, corpus: corpus.len(), findings: findings.into_values().collect() })
}

/// The quiet panic hook and the guards, for as long as a target runs.
struct Armed;

impl Armed {
    fn new(target: &Target, options: &Options, out: &Path) -> Self {
        std::panic::set_hook(Box::new(|info| {
            let at = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, message));
        }));
        guard::arm(target.name, out, options.max_alloc, options.timeout);
        Armed
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        guard::disarm();
        // Back to the default hook, which prints panics.
        drop(std::panic::take_hook());
    }
}

/// A smaller input with the same finding: chunks removed, halves first, while the finding stays.
fn shrink(runner: &mut Runner, input: &[u8], key: &str, refused: bool) -> Vec<u8> {
    // A refused allocation cannot be retried safely (the next refusal may abort); keep the input as it is.
    if refused {
        return input.to_vec();
    }
    let mut best = input.to_vec();
    let mut chunk = best.len() / 2;
    let mut tries = 0;
    while chunk > 0 && tries < 2_000 {
        let mut at = 0;
        let mut removed = false;
        while at < best.len() && tries < 2_000 {
            let mut candidate = best.clone();
            candidate.drain(at..(at + chunk).min(best.len()));
            tries += 1;
            guard::begin(&candidate);
            let outcome = run_one(runner, &candidate);
            let refused = guard::end();
            if outcome.key(refused).as_deref() == Some(key) {
                best = candidate;
                removed = true;
            } else {
                at += chunk;
            }
        }
        if !removed {
            chunk /= 2;
        }
    }
    best
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn print_report(report: &Report) {
    println!(
        "{}: {} inputs ({} ended in a value), corpus {}, {} finding(s)",
        report.target,
        report.inputs,
        report.values,
        report.corpus,
        report.findings.len()
    );
    for f in &report.findings {
        println!("  {} ({} input(s)): {}\n    saved: {}", f.kind, f.count, f.what, f.saved.display());
    }
}

/// Runs saved inputs with the default panic hook, printing each outcome.
fn replay(target: &Target, files: &[PathBuf]) -> Result<()> {
    let mut runner = (target.setup)()?;
    for file in files {
        let input = std::fs::read(file)?;
        match runner(&input) {
            Ok(()) => println!("{}: a value", file.display()),
            Err(e) => println!("{}: error: {e}", file.display()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target's seeds load and 200 mutated inputs run without a finding (the harness as CI's short pass
    /// runs it, small enough for `cargo test`).
    #[test]
    fn every_target_runs_a_short_deterministic_pass() {
        let options = Options {
            budget: Duration::from_secs(60),
            max_inputs: 200,
            seed: 1,
            timeout: Duration::from_secs(60),
            max_alloc: 1 << 30,
        };
        let out = tempfile::tempdir().unwrap();
        for target in TARGETS {
            let report = fuzz(target, &options, &out.path().join(target.name)).unwrap();
            assert_eq!(report.inputs, 200, "{}", target.name);
            let found: Vec<String> = report.findings.iter().map(|f| format!("{}: {}", f.kind, f.what)).collect();
            assert!(found.is_empty(), "{}: {found:?}", target.name);
        }
    }

    #[test]
    fn signatures_blank_what_varies() {
        assert_eq!(signature("f.toml:12: key `abc`: got 17.5"), "f.toml:#: key ``: got #.#");
        assert_eq!(signature("\"x\" and 'y' in [abc]"), "\"\" and '' in []");
    }

    #[test]
    fn a_panic_is_a_finding_keyed_by_where_it_happened() {
        let panic = Outcome::Panic { at: "src/a.rs:3:9".into(), message: "boom\nmore".into() };
        assert_eq!(panic.finding(false), Some(("panic", "src/a.rs:3:9: boom".to_string())));
        assert_eq!(Outcome::Error("one line\n".into()).finding(false), None);
        assert!(Outcome::Error("two\nlines".into()).finding(false).is_some());
        assert!(Outcome::Value.finding(true).is_some());
    }
}
