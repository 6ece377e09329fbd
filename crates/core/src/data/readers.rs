//! Streaming record readers: JSONL line by line, Parquet row group by row group (only the columns TRL's formats
//! use), plain text in pieces of about a MiB cut at line breaks. No reader holds a whole file in memory.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, reader::RowIter};
use parquet::schema::types::Type;
use serde_json::{Map, Number, Value};

use super::rows::{EXTRA_KEYS, FORMAT_KEYS, Row};
use crate::error::{CoreError, Result, one_line};

/// Where a record came from, as error messages show it: `file:17` (JSONL, 1-based line), `file: row 16 (0-based)`
/// (Parquet, the index `datasets` would use), or the file alone (plain text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    /// 1-based line of a JSONL file.
    pub line: Option<u64>,
    /// 0-based row of a Parquet file.
    pub row: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.row) {
            (Some(line), _) => write!(f, "{}:{line}", self.path.display()),
            (_, Some(row)) => write!(f, "{}: row {row} (0-based)", self.path.display()),
            _ => write!(f, "{}", self.path.display()),
        }
    }
}

/// One record of a file.
pub(crate) enum Record {
    /// A JSON object (JSONL line or Parquet row).
    Row(Value),
    /// A piece of a plain-text document; `first`/`last` mark the document's start and end.
    TextPiece { text: String, first: bool, last: bool },
}

/// A record, or why this one record is malformed (the caller may skip it).
pub(crate) type RecordResult = std::result::Result<Record, String>;

/// Plain text is read and tokenized in pieces of about this many bytes.
const TEXT_PIECE_BYTES: usize = 1 << 20;

/// Extensions that are certainly not text, refused rather than trained on as if they were.
const NOT_TEXT: [&str; 12] =
    ["csv", "tsv", "arrow", "feather", "gz", "zst", "bz2", "xz", "zip", "tar", "bin", "safetensors"];

/// A file's reader; Parquet's `rows` is `None` once the parquet crate panicked reading it (its state unknown).
enum Kind {
    Jsonl { reader: BufReader<File>, line: u64, buf: Vec<u8> },
    Parquet { rows: Option<Box<RowIter<'static>>>, row: u64 },
    Text { reader: BufReader<File>, piece: usize, carry: Vec<u8>, offset: u64, first: bool, done: bool },
}

/// Reads the records of one file in order.
pub(crate) struct RecordReader {
    path: PathBuf,
    kind: Kind,
}

impl RecordReader {
    /// Opens a file by its extension: `.jsonl`/`.json`/`.ndjson` JSON Lines, `.parquet`, anything else plain text.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| CoreError::io(path, e))?;
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let kind = match extension.as_str() {
            "jsonl" | "json" | "ndjson" => Kind::Jsonl { reader: BufReader::new(file), line: 0, buf: Vec::new() },
            "parquet" => Kind::Parquet { rows: Some(Box::new(parquet_rows(path, file)?)), row: 0 },
            ext if NOT_TEXT.contains(&ext) => {
                return Err(CoreError::Invalid(format!(
                    "{}: unsupported data file type `.{ext}`; use .jsonl, .parquet or plain text",
                    path.display()
                )));
            }
            _ => Kind::Text {
                reader: BufReader::new(file),
                piece: TEXT_PIECE_BYTES,
                carry: Vec::new(),
                offset: 0,
                first: true,
                done: false,
            },
        };
        Ok(Self { path: path.to_path_buf(), kind })
    }

    /// Whether the file holds rows (JSONL, Parquet) rather than a plain-text document.
    pub fn holds_rows(&self) -> bool {
        !matches!(self.kind, Kind::Text { .. })
    }

    /// The next record with its location; `None` at the end of the file. The outer error (I/O, an unreadable
    /// Parquet file, text that is not UTF-8) ends reading; the inner one is a malformed record.
    pub fn next_record(&mut self) -> Result<Option<(Location, RecordResult)>> {
        let path = &self.path;
        let mut location = Location { path: path.clone(), line: None, row: None };
        match &mut self.kind {
            Kind::Jsonl { reader, line, buf } => loop {
                buf.clear();
                if reader.read_until(b'\n', buf).map_err(|e| CoreError::io(path, e))? == 0 {
                    return Ok(None);
                }
                *line += 1;
                // Without the line break, so a truncated object's error points into the line.
                let mut bytes = buf.as_slice().trim_ascii_end();
                if *line == 1 {
                    bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
                }
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                location.line = Some(*line);
                return Ok(Some((location, parse_json_line(bytes))));
            },
            Kind::Parquet { rows: Some(rows), row } => {
                location.row = Some(*row);
                let next = match parquet_call(|| rows.next()) {
                    Ok(Some(next)) => next,
                    Ok(None) => return Ok(None),
                    Err(panic) => {
                        self.kind = Kind::Parquet { rows: None, row: 0 };
                        return Err(CoreError::Invalid(format!(
                            "{location}: cannot read the row: corrupt data ({panic})"
                        )));
                    }
                };
                *row += 1;
                let record = next.map_err(|e| {
                    CoreError::Invalid(format!("{location}: cannot read the row: {}", e.to_string().replace('\n', " ")))
                })?;
                let object: Map<String, Value> =
                    record.get_column_iter().map(|(name, field)| (name.clone(), field_to_json(field))).collect();
                Ok(Some((location, Ok(Record::Row(Value::Object(object))))))
            }
            Kind::Parquet { rows: None, .. } => Ok(None),
            Kind::Text { reader, piece, carry, offset, first, done } => {
                if *done {
                    return Ok(None);
                }
                let want = piece.saturating_sub(carry.len()) as u64;
                let read = (&mut *reader).take(want).read_to_end(carry).map_err(|e| CoreError::io(path, e))?;
                let last = (read as u64) < want;
                let cut = if last { carry.len() } else { piece_end(carry) };
                let mut bytes: Vec<u8> = carry.drain(..cut).collect();
                if *first && bytes.starts_with(b"\xEF\xBB\xBF") {
                    bytes.drain(..3);
                }
                let text = String::from_utf8(bytes).map_err(|e| {
                    let at = *offset + e.utf8_error().valid_up_to() as u64;
                    CoreError::Invalid(format!(
                        "{}: byte {at}: not valid UTF-8 (text files must be UTF-8)",
                        path.display()
                    ))
                })?;
                *offset += cut as u64;
                *done = last;
                let is_first = std::mem::replace(first, false);
                if is_first && last && text.trim().is_empty() {
                    return Ok(None);
                }
                Ok(Some((location, Ok(Record::TextPiece { text, first: is_first, last }))))
            }
        }
    }
}

/// Where to end a text piece: after the last line break, else the last whitespace, else before a character that
/// may be incomplete.
fn piece_end(bytes: &[u8]) -> usize {
    if let Some(i) = bytes.iter().rposition(|&b| b == b'\n') {
        return i + 1;
    }
    if let Some(i) = bytes.iter().rposition(u8::is_ascii_whitespace) {
        return i + 1;
    }
    let mut cut = bytes.len();
    while cut > 0 && bytes[cut - 1] & 0xC0 == 0x80 {
        cut -= 1;
    }
    if cut > 0 && bytes[cut - 1] >= 0xC0 {
        cut -= 1;
    }
    // Not UTF-8 at all: let the caller report where.
    if cut == 0 { bytes.len() } else { cut }
}

fn parse_json_line(bytes: &[u8]) -> RecordResult {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not valid UTF-8 (at byte {} of the line)", e.valid_up_to() + 1))?;
    serde_json::from_str(text).map(Record::Row).map_err(|e| {
        let message = e.to_string();
        let cause = message.split(" at line ").next().unwrap_or(&message);
        format!("invalid JSON at column {}: {cause}", e.column())
    })
}

/// A row iterator over the columns that decide TRL's formats and the other scalar columns (a prompt-only row's
/// answer, which reward functions read), leaving out nested ones, so wide files (images) stay cheap.
fn parquet_rows(path: &Path, file: File) -> Result<RowIter<'static>> {
    let bad = |e: parquet::errors::ParquetError| {
        CoreError::Invalid(format!(
            "{}: not a readable Parquet file: {}",
            path.display(),
            e.to_string().replace('\n', " ")
        ))
    };
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    check_column_chunks(path, reader.metadata())?;
    let schema = reader.metadata().file_metadata().schema();
    let fields: Vec<_> = schema
        .get_fields()
        .iter()
        .filter(|f| FORMAT_KEYS.contains(&f.name()) || EXTRA_KEYS.contains(&f.name()) || f.is_primitive())
        .cloned()
        .collect();
    if !fields.iter().any(|f| FORMAT_KEYS.contains(&f.name())) {
        // Escaped: a column name may hold a line break, and the error is one line.
        let names: Vec<String> = schema.get_fields().iter().map(|f| one_line(f.name()).into_owned()).collect();
        return Err(CoreError::Invalid(format!(
            "{}: no column of TRL's formats ({}) among the columns [{}]",
            path.display(),
            FORMAT_KEYS.join(", "),
            names.join(", ")
        )));
    }
    let projection = Type::group_type_builder(schema.name()).with_fields(fields).build().map_err(bad)?;
    RowIter::from_file_into(Box::new(reader)).project(Some(projection)).map_err(bad)
}

/// Refuses a column chunk at a negative offset or of a negative size: the parquet crate asserts against them (a
/// panic) when it reads the chunk.
fn check_column_chunks(path: &Path, metadata: &ParquetMetaData) -> Result<()> {
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, column) in group.columns().iter().enumerate() {
            let start = column.dictionary_page_offset().unwrap_or(column.data_page_offset());
            if start < 0 || column.compressed_size() < 0 {
                return Err(CoreError::Invalid(format!(
                    "{}: not a readable Parquet file: row group {g}, column {c}: a chunk at offset {start} of {} bytes \
                     (negative)",
                    path.display(),
                    column.compressed_size()
                )));
            }
        }
    }
    Ok(())
}

/// Runs a call into the parquet crate's page decoding, its panic becoming the message: it asserts on some corrupt
/// pages (a dictionary page holding fewer bytes than its value count needs) instead of returning an error, and
/// nothing short of decoding the pages ourselves could rule that out before the call.
fn parquet_call<T>(call: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).map_err(|payload| {
        let message = payload.downcast_ref::<&str>().map(|s| s.to_string());
        let message = message.or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_default();
        message.replace('\n', " ")
    })
}

/// A Parquet value as JSON. Binary columns that hold UTF-8 become strings (some writers leave text unannotated).
fn field_to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => Value::from(*v),
        Field::Short(v) => Value::from(*v),
        Field::Int(v) => Value::from(*v),
        Field::Long(v) => Value::from(*v),
        Field::UByte(v) => Value::from(*v),
        Field::UShort(v) => Value::from(*v),
        Field::UInt(v) => Value::from(*v),
        Field::ULong(v) => Value::from(*v),
        Field::Float(v) => Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number),
        Field::Double(v) => Number::from_f64(*v).map_or(Value::Null, Value::Number),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => Value::String(String::from_utf8_lossy(b.data()).into_owned()),
        Field::Group(row) => {
            Value::Object(row.get_column_iter().map(|(name, f)| (name.clone(), field_to_json(f))).collect())
        }
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_to_json).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| match k {
                    Field::Str(s) => (s.clone(), field_to_json(v)),
                    other => (other.to_string(), field_to_json(v)),
                })
                .collect(),
        ),
        // Dates, times, decimals, half floats: no TRL field holds them; their display form is enough.
        other => Value::String(other.to_string()),
    }
}

/// Reads the rows of one dataset file in TRL's formats, for trainers that need the rows themselves (preference
/// pairs, prompts). A malformed row yields one error naming file, line or row, and field, and reading goes on with
/// the next row; an I/O error ends the iteration. A plain-text file yields its whole content as one
/// [`Row::Text`].
pub struct RowReader {
    records: RecordReader,
    failed: bool,
}

impl RowReader {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self { records: RecordReader::open(path)?, failed: false })
    }
}

impl Iterator for RowReader {
    type Item = Result<(Location, Row)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut document = String::new();
        loop {
            let (location, record) = match self.records.next_record() {
                Ok(Some(next)) => next,
                Ok(None) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            let row = match record {
                Ok(Record::Row(value)) => Row::parse(&value),
                Ok(Record::TextPiece { text, last, .. }) => {
                    document.push_str(&text);
                    if !last {
                        continue;
                    }
                    Ok(Row::Text { text: std::mem::take(&mut document) })
                }
                Err(message) => Err(message),
            };
            return Some(
                row.map(|row| (location.clone(), row)).map_err(|m| CoreError::Invalid(format!("{location}: {m}"))),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(path: &Path, size: usize) -> Vec<(String, bool, bool)> {
        let mut reader = RecordReader::open(path).unwrap();
        if let Kind::Text { piece, .. } = &mut reader.kind {
            *piece = size;
        }
        let mut out = Vec::new();
        while let Some((_, record)) = reader.next_record().unwrap() {
            let Ok(Record::TextPiece { text, first, last }) = record else { panic!("a text piece") };
            out.push((text, first, last));
        }
        out
    }

    #[test]
    fn text_streams_in_pieces_cut_at_line_breaks_and_character_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.txt");
        let text = "Ünïcödé line one\nzweite Zeile ÄÖÜ\n".repeat(20) + &"é".repeat(100);
        std::fs::write(&path, format!("\u{FEFF}{text}")).unwrap();
        let got = pieces(&path, 64);
        assert!(got.len() > 10);
        assert_eq!(got.iter().map(|p| p.0.as_str()).collect::<String>(), text, "nothing lost, BOM dropped");
        assert!(got[..got.len() - 5].iter().all(|p| p.0.ends_with('\n')), "cut after line breaks where there are any");
        let flags: Vec<(bool, bool)> = got.iter().map(|p| (p.1, p.2)).collect();
        assert_eq!(flags[0], (true, false));
        assert_eq!(flags[flags.len() - 1], (false, true));
        assert!(flags[1..flags.len() - 1].iter().all(|&f| f == (false, false)));
        // A small file is one piece; a blank one none.
        std::fs::write(&path, "hello\n").unwrap();
        assert_eq!(pieces(&path, 64), vec![("hello\n".to_string(), true, true)]);
        std::fs::write(&path, " \n\n").unwrap();
        assert!(pieces(&path, 64).is_empty());
    }

    /// The first error reading a fuzz-found Parquet file from the fixtures.
    fn first_parquet_error(name: &str) -> String {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(name);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.parquet");
        std::fs::copy(fixture, &path).unwrap();
        let mut rows = match RowReader::open(&path) {
            Ok(rows) => rows,
            Err(e) => return e.to_string(),
        };
        let err = rows.find_map(Result::err).expect("an error").to_string();
        assert!(rows.next().is_none(), "reading ends after the error");
        err
    }

    #[test]
    fn a_column_chunk_at_a_negative_offset_is_an_error_not_a_panic() {
        // Found by `cargo xtask fuzz --target parquet-rows`: the parquet crate asserts on it.
        let err = first_parquet_error("parquet_negative_column_offset.parquet");
        assert!(
            err.ends_with(
                "not a readable Parquet file: row group 1, column 3: a chunk at offset 456 of -62 bytes (negative)"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_dictionary_page_shorter_than_its_count_is_an_error_not_a_panic() {
        // Found by `cargo xtask fuzz --target parquet-rows`: the parquet crate's decoder panics on it.
        let err = first_parquet_error("parquet_short_dictionary_page.parquet");
        assert!(err.contains("row 0 (0-based): cannot read the row: corrupt data"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_column_name_with_a_line_break_stays_on_the_error_line() {
        // Found by `cargo xtask fuzz --target parquet-rows`: the column names were printed raw.
        let err = first_parquet_error("parquet_column_name_with_line_break.parquet");
        assert!(err.contains("no column of TRL's formats"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn text_that_is_not_utf8_is_an_error_naming_the_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.txt");
        std::fs::write(&path, b"abc\xFFdef").unwrap();
        let err = RecordReader::open(&path).unwrap().next_record().err().unwrap().to_string();
        assert_eq!(err, format!("{}: byte 3: not valid UTF-8 (text files must be UTF-8)", path.display()));
    }
}
