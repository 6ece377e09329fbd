//! TensorBoard scalar event files (what `tensorboard --logdir` reads): TFRecord framing (length, masked CRC-32C
//! of the length, the serialized `Event`, masked CRC-32C of it) around `Event` protobufs, the first holding the
//! file version and each later one a `Summary` of `simple_value` scalars tagged by metric name. A resumed run
//! starts a new file with a `SessionLog START` just after its step, so TensorBoard drops what a killed run logged
//! after the checkpoint it resumes from.
//! The messages are the few fields of TensorBoard's `event.proto` / `summary.proto` this writes, declared with
//! prost's derive (no protoc needed).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use llmtrain_core::CoreError;
use prost::Message;
use serde_json::{Map, Value};

use super::Logger;
use crate::error::{LightningError, Result};

/// The directory of a run's event files (`tensorboard --logdir runs/x/tensorboard`, or `runs/` for every run).
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// TensorBoard's `Event`, the fields written here.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// What an [`Event`] holds.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `Summary.Value` with a scalar (`simple_value`, in the proto a oneof member: written even when 0).
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    /// `SessionStatus`: 1 is START.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const SESSION_START: i32 = 1;
const FILE_VERSION: &str = "brain.Event:2";

/// Appends scalar events to a new event file in `<out>/tensorboard/`.
pub struct TensorBoardLogger {
    path: PathBuf,
    file: BufWriter<File>,
}

impl TensorBoardLogger {
    /// Opens a new event file (TensorBoard reads every file of the directory in name order); resuming after
    /// `resume_step`, its first scalar event is a session start at that step.
    pub fn open(out: &Path, resume_step: Option<u64>) -> Result<Self> {
        let dir = out.join(TENSORBOARD_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // TensorBoard reads a directory's files in name order: the time leads, to the nanosecond, so a resumed
        // run's file sorts after the killed run's even within one second.
        let name = format!(
            "events.out.tfevents.{:010}.{:09}.{}.{}",
            now.as_secs(),
            now.subsec_nanos(),
            hostname(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| CoreError::io(&path, e))?;
        let mut logger = Self { path, file: BufWriter::new(file) };
        logger.write(&Event { wall_time: wall_time(), step: 0, what: Some(What::FileVersion(FILE_VERSION.into())) })?;
        if let Some(step) = resume_step {
            // TensorBoard keeps, of what it read before a session start at step S, the points before S: the
            // checkpoint's own step stays, what a killed run logged after it goes.
            let start = Event {
                wall_time: wall_time(),
                step: step as i64 + 1,
                what: Some(What::SessionLog(SessionLog { status: SESSION_START })),
            };
            logger.write(&start)?;
        }
        logger.flush()?;
        Ok(logger)
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        self.file.write_all(&record(&event.encode_to_vec())).map_err(|e| CoreError::io(&self.path, e).into())
    }

    fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| CoreError::io(&self.path, e).into())
    }
}

impl Logger for TensorBoardLogger {
    /// One event at the record's step holding each numeric value but the step itself, tagged by its name.
    fn log_metrics(&mut self, record: &Map<String, Value>) -> Result<()> {
        let step = record.get("step").and_then(Value::as_i64).unwrap_or(0);
        let value: Vec<SummaryValue> = record
            .iter()
            .filter(|(name, _)| *name != "step")
            .filter_map(|(name, v)| Some(SummaryValue { tag: name.clone(), simple_value: Some(v.as_f64()? as f32) }))
            .collect();
        if value.is_empty() {
            return Ok(());
        }
        self.write(&Event { wall_time: wall_time(), step, what: Some(What::Summary(Summary { value })) })?;
        // Flushed per record: TensorBoard shows a live run, and a killed one loses nothing logged.
        self.flush()
    }
}

/// The scalars of a run's event files as TensorBoard shows them, `(step, tag, value)`: the files of `dir` in
/// name order, both CRCs of every record checked, and a session start at step S dropping the points read
/// before it at steps S and later (for tests and tools that read a run back).
pub fn read_scalars(dir: &Path) -> Result<Vec<(i64, String, f32)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CoreError::io(dir, e))?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("tfevents")))
        .collect();
    files.sort();
    let mut scalars = Vec::new();
    for path in files {
        for event in read_events(&path)? {
            match event.what {
                Some(What::Summary(summary)) => {
                    for value in summary.value {
                        scalars.extend(value.simple_value.map(|v| (event.step, value.tag, v)));
                    }
                }
                Some(What::SessionLog(log)) if log.status == SESSION_START => {
                    scalars.retain(|(step, _, _)| *step < event.step)
                }
                _ => {}
            }
        }
    }
    Ok(scalars)
}

/// The events of one file, both CRCs of every record checked.
fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    let bad = |what: &str| LightningError::Invalid(format!("{}: {what}", path.display()));
    let mut events = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad("truncated record header"));
        }
        let (len_bytes, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        if u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) != masked_crc32c(len_bytes) {
            return Err(bad("record length fails its CRC"));
        }
        let tail = &tail[4..];
        if tail.len() < len.saturating_add(4) {
            return Err(bad("truncated record"));
        }
        let (data, tail) = tail.split_at(len);
        if u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) != masked_crc32c(data) {
            return Err(bad("record data fails its CRC"));
        }
        rest = &tail[4..];
        events.push(Event::decode(data).map_err(|e| bad(&format!("not an Event: {e}")))?);
    }
    Ok(events)
}

/// One TFRecord: the data's length, its masked CRC, the data, and the data's masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut framed = Vec::with_capacity(data.len() + 16);
    framed.extend_from_slice(&length);
    framed.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    framed.extend_from_slice(data);
    framed.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    framed
}

/// TFRecord's masked CRC-32C (Castagnoli): rotated right by 15 bits, plus a constant.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    CASTAGNOLI.checksum(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Byte vectors from an independent encoder (by hand in Python, with its own CRC-32C), whose file TensorBoard
    /// 2.21's EventAccumulator reads back: `python3 scripts/tensorboard_check.py vectors`.
    #[test]
    fn events_and_records_match_tensorboards_bytes() {
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        let version = Event { wall_time: 1.5, step: 0, what: Some(What::FileVersion(FILE_VERSION.into())) };
        assert_eq!(hex(&version.encode_to_vec()), "09000000000000f83f1a0d627261696e2e4576656e743a32");
        assert_eq!(
            hex(&record(&version.encode_to_vec())),
            "1800000000000000a37f4b2209000000000000f83f1a0d627261696e2e4576656e743a322a28646c"
        );
        let value = SummaryValue { tag: "loss".into(), simple_value: Some(0.25) };
        let scalar = Event { wall_time: 2.0, step: 7, what: Some(What::Summary(Summary { value: vec![value] })) };
        assert_eq!(hex(&scalar.encode_to_vec()), "09000000000000004010072a0d0a0b0a046c6f7373150000803e");
        assert_eq!(
            hex(&record(&scalar.encode_to_vec())),
            "1a00000000000000129bd82d09000000000000004010072a0d0a0b0a046c6f7373150000803e93324efe"
        );
    }

    #[test]
    fn logged_scalars_read_back_a_resume_drops_later_points_and_a_damaged_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let record = |step: u64, loss: f64| json!({"step": step, "loss": loss, "skipped_steps": 0, "note": "text"});
        let mut logger = TensorBoardLogger::open(dir.path(), None).unwrap();
        for step in 1..=3 {
            logger.log_metrics(record(step, step as f64).as_object().unwrap()).unwrap();
        }
        drop(logger);
        let events = dir.path().join(TENSORBOARD_DIR);
        let scalar = |step: i64, tag: &str, value: f32| (step, tag.to_string(), value);
        assert_eq!(read_scalars(&events).unwrap()[..2], [scalar(1, "loss", 1.0), scalar(1, "skipped_steps", 0.0)]);
        // Resumed from a checkpoint at step 2: step 3 is logged again, step 2 stays.
        let mut resumed = TensorBoardLogger::open(dir.path(), Some(2)).unwrap();
        resumed.log_metrics(record(3, 30.0).as_object().unwrap()).unwrap();
        drop(resumed);
        let losses: Vec<_> = read_scalars(&events).unwrap().into_iter().filter(|(_, tag, _)| tag == "loss").collect();
        assert_eq!(losses, vec![scalar(1, "loss", 1.0), scalar(2, "loss", 2.0), scalar(3, "loss", 30.0)]);

        let mut files: Vec<_> = std::fs::read_dir(&events).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), 2);
        assert!(files[0].file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&files[0], bytes).unwrap();
        assert!(read_scalars(&events).unwrap_err().to_string().contains("CRC"));
    }
}
