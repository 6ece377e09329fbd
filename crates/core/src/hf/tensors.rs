//! Reading and writing safetensors files, single or sharded, as f32 host buffers.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};

use crate::error::{CoreError, Result};
use crate::fsutil::write_atomic;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Element types a checkpoint may be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    BF16,
    F16,
}

impl StorageDtype {
    /// Parses transformers' names ("float32", "bfloat16", "float16") and short ones ("f32", "bf16", "f16").
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "float32" | "f32" | "fp32" => Some(Self::F32),
            "bfloat16" | "bf16" => Some(Self::BF16),
            "float16" | "f16" | "fp16" => Some(Self::F16),
            _ => None,
        }
    }

    /// The name transformers writes in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::BF16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::BF16 => Dtype::BF16,
            Self::F16 => Dtype::F16,
        }
    }

    fn size(self) -> usize {
        if self == Self::F32 { 4 } else { 2 }
    }

    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            Self::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Self::BF16 => values.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
            Self::F16 => values.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        }
    }
}

/// A tensor on the host: f32 values and a shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The tensors of a checkpoint directory, memory-mapped, decoded to f32 on request. Each file's header is parsed
/// once, at open.
pub struct TensorFiles {
    /// Path, mapping, and where the tensor bytes start (after the 8-byte length and the JSON header).
    files: Vec<(PathBuf, Mmap, usize)>,
    /// Tensor name → (index into `files`, its dtype, shape and byte range).
    locations: BTreeMap<String, (usize, TensorInfo)>,
}

impl TensorFiles {
    /// Opens `dir/model.safetensors` or, failing that, the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            shard_paths(&index_path)?
        } else {
            return Err(CoreError::Invalid(format!(
                "{}: no {SINGLE_FILE} or {INDEX_FILE} in this directory",
                dir.display()
            )));
        };
        Self::open_files(paths)
    }

    /// Opens the given safetensors files as one collection of tensors.
    pub fn open_files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut locations = BTreeMap::new();
        for path in paths {
            let file = File::open(&path).map_err(|e| CoreError::io(&path, e))?;
            // SAFETY: the map is read-only and checkpoint files are not modified while a model loads.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| CoreError::io(&path, e))?;
            let invalid =
                |e: safetensors::SafeTensorError| CoreError::Safetensors { path: path.clone(), message: e.to_string() };
            // `deserialize` validates that every tensor's bytes lie inside the file; then keep the header.
            SafeTensors::deserialize(&map).map_err(invalid)?;
            let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(invalid)?;
            for (name, info) in metadata.tensors() {
                locations.insert(name, (files.len(), info.clone()));
            }
            files.push((path, map, 8 + header_len));
        }
        Ok(Self { files, locations })
    }

    /// Names of every tensor in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// The file holding `name`, or the directory's main file when it is absent (for error messages).
    pub fn path_of(&self, name: &str) -> &Path {
        let index = self.locations.get(name).map(|l| l.0).unwrap_or(0);
        &self.files[index].0
    }

    /// Shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.locations.get(name).map(|(_, info)| info.shape.clone())
    }

    /// Decodes `name` to f32, checking it has `expected` shape.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let Some((index, info)) = self.locations.get(name) else {
            return Err(CoreError::MissingTensor {
                path: self.files[0].0.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
            });
        };
        let (path, map, start) = &self.files[*index];
        if info.shape != expected {
            return Err(CoreError::ShapeMismatch {
                path: path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let bytes = &map[start + info.data_offsets.0..start + info.data_offsets.1];
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(CoreError::TensorDtype {
                    path: path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(HostTensor { shape: expected.to_vec(), values })
    }
}

fn shard_paths(index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| CoreError::io(index_path, e))?;
    let index: Value = serde_json::from_str(&text).map_err(|e| CoreError::json(index_path, &e))?;
    let Some(map) = index.get("weight_map").and_then(Value::as_object) else {
        return Err(CoreError::key(index_path, "weight_map", "missing or not an object"));
    };
    if map.is_empty() {
        return Err(CoreError::key(index_path, "weight_map", "is empty: the index names no shard file"));
    }
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(CoreError::key(index_path, &format!("weight_map.{tensor}"), "expected a file name"));
        };
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files.sort_unstable();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Writes named tensors as transformers does: one `model.safetensors`, or shards of at most `max_shard_bytes`
/// plus `model.safetensors.index.json` when they do not fit in one. Files appear atomically.
pub fn write_tensors(
    dir: &Path,
    tensors: &[(String, HostTensor)],
    dtype: StorageDtype,
    max_shard_bytes: u64,
) -> Result<()> {
    // Group tensors, in order, into shards no larger than the limit (a single larger tensor gets its own).
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut shard_bytes = 0u64;
    let mut total_bytes = 0u64;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let bytes = (t.values.len() * dtype.size()) as u64;
        if shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shards.last_mut().expect("at least one shard").push(i);
        shard_bytes += bytes;
        total_bytes += bytes;
    }
    let count = shards.len();
    let name_of = |k: usize| {
        if count == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{count:05}.safetensors", k + 1) }
    };
    let mut weight_map = serde_json::Map::new();
    for (k, members) in shards.iter().enumerate() {
        let file = name_of(k);
        let shard: Vec<&(String, HostTensor)> = members.iter().map(|&i| &tensors[i]).collect();
        write_safetensors_file(&dir.join(&file), &shard, dtype)?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    if count > 1 {
        let index = json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map});
        let text = serde_json::to_string_pretty(&index).expect("JSON values serialise");
        write_atomic(&dir.join(INDEX_FILE), format!("{text}\n").as_bytes())?;
    }
    Ok(())
}

/// Writes one safetensors file (metadata `format: pt`) atomically.
pub fn write_safetensors_file(path: &Path, tensors: &[&(String, HostTensor)], dtype: StorageDtype) -> Result<()> {
    let encoded: Vec<(&str, Vec<u8>, &[usize])> = tensors
        .iter()
        .map(|(name, t)| {
            let mut bytes = Vec::with_capacity(t.values.len() * dtype.size());
            dtype.encode(&t.values, &mut bytes);
            (name.as_str(), bytes, t.shape.as_slice())
        })
        .collect();
    let mut views = Vec::with_capacity(encoded.len());
    for (name, bytes, shape) in &encoded {
        let view = safetensors::tensor::TensorView::new(dtype.safetensors(), shape.to_vec(), bytes)
            .map_err(|e| CoreError::Invalid(format!("tensor `{name}`: {e}")))?;
        views.push((*name, view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let buffer = safetensors::serialize(views, Some(metadata))
        .map_err(|e| CoreError::Safetensors { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_naming_no_shard_is_one_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(INDEX_FILE);
        std::fs::write(&index, r#"{"metadata": {}, "weight_map": {}}"#).unwrap();
        let err = TensorFiles::open(dir.path()).err().expect("an empty index is refused").to_string();
        assert!(err.contains("key `weight_map`: is empty"), "{err}");
    }
}
