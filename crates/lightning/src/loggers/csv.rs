//! Lightning's CSVLogger layout: `metrics.csv` with one row per logged record and one column per metric name
//! (sorted, `step` among them; a record leaves the other columns empty), rewritten whole when a new name appears,
//! and the run's hyper-parameters in `hparams.yaml`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use llmtrain_core::CoreError;
use llmtrain_core::fsutil::write_atomic;
use serde_json::{Map, Value};

use super::Logger;
use crate::error::{LightningError, Result};

pub const CSV_FILE: &str = "metrics.csv";
pub const HPARAMS_FILE: &str = "hparams.yaml";

/// Writes `metrics.csv` and `hparams.yaml` in a run's output directory.
pub struct CsvLogger {
    path: PathBuf,
    /// The header: every metric name logged so far, sorted.
    columns: Vec<String>,
    /// Every row so far, as cells by column name, for rewriting the file when a new name appears.
    rows: Vec<Map<String, Value>>,
    file: File,
}

impl CsvLogger {
    /// Starts `metrics.csv` afresh, or, resuming after `resume_step`, keeps its rows up to that step; writes
    /// `hparams.yaml`.
    pub fn open(out: &Path, resume_step: Option<u64>, hparams: &Value) -> Result<Self> {
        write_atomic(&out.join(HPARAMS_FILE), yaml(hparams, 0).as_bytes())?;
        let path = out.join(CSV_FILE);
        let rows = match resume_step {
            Some(step) if path.exists() => read_rows(&path)?
                .into_iter()
                .filter(|row| row.get("step").and_then(Value::as_u64).is_some_and(|s| s <= step))
                .collect(),
            _ => Vec::new(),
        };
        let mut columns: Vec<String> = rows.iter().flat_map(|row| row.keys().cloned()).collect();
        columns.sort();
        columns.dedup();
        let file = rewrite(&path, &columns, &rows)?;
        Ok(Self { path, columns, rows, file })
    }
}

impl Logger for CsvLogger {
    fn log_metrics(&mut self, record: &Map<String, Value>) -> Result<()> {
        let row: Map<String, Value> =
            record.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
        if row.keys().any(|name| !self.columns.contains(name)) {
            self.columns.extend(row.keys().cloned());
            self.columns.sort();
            self.columns.dedup();
            self.rows.push(row);
            self.file = rewrite(&self.path, &self.columns, &self.rows)?;
            return Ok(());
        }
        let line = csv_line(&self.columns, &row)?;
        self.file.write_all(&line).and_then(|()| self.file.flush()).map_err(|e| CoreError::io(&self.path, e))?;
        self.rows.push(row);
        Ok(())
    }
}

/// Replaces the file with `columns` as its header and `rows` (atomically), and opens it for appending.
fn rewrite(path: &Path, columns: &[String], rows: &[Map<String, Value>]) -> Result<File> {
    let mut text = Vec::new();
    if !columns.is_empty() {
        let mut writer = csv::Writer::from_writer(&mut text);
        writer.write_record(columns).map_err(|e| csv_error(path, e))?;
        writer.flush().map_err(|e| CoreError::io(path, e))?;
    }
    for row in rows {
        text.extend(csv_line(columns, row)?);
    }
    write_atomic(path, &text)?;
    OpenOptions::new().append(true).open(path).map_err(|e| CoreError::io(path, e).into())
}

/// One row's line: each column's cell (empty where the row has no value), quoted where CSV needs it.
fn csv_line(columns: &[String], row: &Map<String, Value>) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut writer = csv::Writer::from_writer(&mut line);
    writer
        .write_record(columns.iter().map(|name| row.get(name).map(cell).unwrap_or_default()))
        .map_err(|e| LightningError::Invalid(format!("{CSV_FILE}: {e}")))?;
    drop(writer);
    Ok(line)
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The rows of an existing `metrics.csv`, each cell kept as its text (so it is written back unchanged; `step` is
/// a number).
fn read_rows(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| csv_error(path, e))?;
    let columns = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let row = columns
            .iter()
            .zip(record.iter())
            .filter(|(_, text)| !text.is_empty())
            .map(|(name, text)| {
                let value = match (name, text.parse::<u64>()) {
                    ("step", Ok(step)) => Value::from(step),
                    _ => Value::String(text.to_string()),
                };
                (name.to_string(), value)
            })
            .collect();
        rows.push(row);
    }
    Ok(rows)
}

fn csv_error(path: &Path, err: csv::Error) -> LightningError {
    LightningError::Invalid(format!("{}: {err}", path.display()))
}

/// `value` as a YAML block mapping (Lightning's `hparams.yaml`): nested objects indent, everything else is
/// written in JSON's notation, which YAML reads as the same scalars and flow sequences. Written by hand: the
/// maintained YAML crates are parsers or pull a whole document model for this one small emitter.
fn yaml(value: &Value, indent: usize) -> String {
    let Value::Object(fields) = value else {
        return format!("{value}\n");
    };
    let mut text = String::new();
    for (key, value) in fields {
        let pad = " ".repeat(indent);
        let key = if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            key.clone()
        } else {
            Value::from(key.as_str()).to_string()
        };
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                text.push_str(&format!("{pad}{key}:\n"));
                text.push_str(&yaml(value, indent + 2));
            }
            other => text.push_str(&format!("{pad}{key}: {other}\n")),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn log(logger: &mut CsvLogger, record: Value) {
        logger.log_metrics(record.as_object().unwrap()).unwrap();
    }

    #[test]
    fn rows_share_one_sorted_header_and_a_resume_keeps_the_rows_up_to_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut logger =
            CsvLogger::open(dir.path(), None, &json!({"training": {"seed": 7}, "output": {"dir": "runs/x"}})).unwrap();
        log(&mut logger, json!({"step": 1, "loss": 2.5, "lr": 0.001}));
        log(&mut logger, json!({"step": 2, "loss": 2.25, "lr": 0.001}));
        // A new name rewrites the file with the wider header; earlier rows leave its cell empty.
        log(&mut logger, json!({"step": 2, "eval_loss": 2.5, "note": "a, \"quoted\" text"}));
        let text = std::fs::read_to_string(dir.path().join(CSV_FILE)).unwrap();
        assert_eq!(
            text,
            "eval_loss,loss,lr,note,step\n,2.5,0.001,,1\n,2.25,0.001,,2\n2.5,,,\"a, \"\"quoted\"\" text\",2\n"
        );
        let hparams = std::fs::read_to_string(dir.path().join(HPARAMS_FILE)).unwrap();
        assert_eq!(hparams, "training:\n  seed: 7\noutput:\n  dir: \"runs/x\"\n");

        drop(logger);
        let mut resumed = CsvLogger::open(dir.path(), Some(1), &json!({})).unwrap();
        log(&mut resumed, json!({"step": 2, "loss": 2.0, "lr": 0.001}));
        let text = std::fs::read_to_string(dir.path().join(CSV_FILE)).unwrap();
        assert_eq!(text, "loss,lr,step\n2.5,0.001,1\n2.0,0.001,2\n");
    }
}
