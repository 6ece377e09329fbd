//! Streaming record readers: JSONL line by line, Parquet row group by row group, plain text as one document.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Lines, Read};
use std::path::{Path, PathBuf};

use parquet::file::reader::SerializedFileReader;
use parquet::record::reader::RowIter;
use serde_json::Value;

use crate::error::{CoreError, Result};

/// Where a record came from, for error messages: `file:line` (JSONL, 1-based), `file: row N` (Parquet, 1-based),
/// or the file (plain text).
#[derive(Debug, Clone)]
pub struct Location {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub parquet_row: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.parquet_row) {
            (Some(line), _) => write!(f, "{}:{line}", self.path.display()),
            (_, Some(row)) => write!(f, "{}: row {row}", self.path.display()),
            _ => write!(f, "{}", self.path.display()),
        }
    }
}

/// One record: a JSON row, or a whole plain-text document.
pub enum Record {
    Row(Value),
    Document(String),
}

enum Kind {
    Jsonl { lines: Lines<BufReader<File>>, line: usize },
    Parquet { rows: Box<RowIter<'static>>, row: usize },
    Text { document: Option<String> },
}

/// Reads the records of one file, in order, without holding the file in memory (plain text excepted: a
/// document is tokenized whole).
pub struct RecordReader {
    path: PathBuf,
    kind: Kind,
}

impl RecordReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| CoreError::io(path, e))?;
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let kind = match extension.as_str() {
            "jsonl" | "json" => Kind::Jsonl { lines: BufReader::new(file).lines(), line: 0 },
            "parquet" => {
                let reader = SerializedFileReader::new(file)
                    .map_err(|e| CoreError::Invalid(format!("{}: not a readable Parquet file: {e}", path.display())))?;
                Kind::Parquet { rows: Box::new(reader.into_iter()), row: 0 }
            }
            _ => {
                let mut text = String::new();
                BufReader::new(file).read_to_string(&mut text).map_err(|e| CoreError::io(path, e))?;
                Kind::Text { document: Some(text) }
            }
        };
        Ok(Self { path: path.to_path_buf(), kind })
    }

    /// The next record, or `Err((location, message))` for a record that cannot be read (skippable), or an I/O
    /// error (not skippable) as `Ok(Err(..))`'s outer error.
    pub fn next_record(&mut self) -> Result<Option<(Location, std::result::Result<Record, String>)>> {
        let mut location = Location { path: self.path.clone(), line: None, parquet_row: None };
        match &mut self.kind {
            Kind::Jsonl { lines, line } => loop {
                let Some(next) = lines.next() else { return Ok(None) };
                *line += 1;
                let text = next.map_err(|e| CoreError::io(&self.path, e))?;
                if text.trim().is_empty() {
                    continue;
                }
                location.line = Some(*line);
                let parsed = serde_json::from_str(&text).map(Record::Row).map_err(|e| {
                    let message = e.to_string();
                    format!("invalid JSON: {}", message.split(" at line ").next().unwrap_or(&message))
                });
                return Ok(Some((location, parsed)));
            },
            Kind::Parquet { rows, row } => {
                let Some(next) = rows.next() else { return Ok(None) };
                *row += 1;
                location.parquet_row = Some(*row);
                let parsed = next.map(|r| Record::Row(r.to_json_value())).map_err(|e| format!("unreadable row: {e}"));
                Ok(Some((location, parsed)))
            }
            Kind::Text { document } => Ok(document.take().map(|d| (location, Ok(Record::Document(d))))),
        }
    }
}
