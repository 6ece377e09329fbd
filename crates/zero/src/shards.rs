//! A ZeRO checkpoint's optimizer state: each rank writes its share of Adam's moments to a file of its own
//! (`optimizer-rank-R-of-N.safetensors`), and `optimizer.json` records the layout (ranks, chunk, parameters), so
//! that a run with any number of ranks can take its own shares from them.

use std::collections::BTreeMap;
use std::path::Path;

use llmtrain_accel::AccelError;
use llmtrain_core::error::CoreError;
use llmtrain_core::fsutil::write_atomic;
use llmtrain_core::hf::{HostTensor, StorageDtype, TensorFiles, write_safetensors_file};
use llmtrain_core::train::AdamWConfig;
use llmtrain_core::train::checkpoint::{OPTIMIZER_META_FILE, SHARDED_KEY};
use serde_json::{Value, json};

use crate::partition::{Partition, Window};

type Result<T> = std::result::Result<T, AccelError>;

/// Each parameter's share of the two moments, on the host: (exp_avg, exp_avg_sq) by path.
pub type HostMoments = BTreeMap<String, (Vec<f32>, Vec<f32>)>;

/// The file of rank `rank`'s share among `world` ranks.
pub fn shard_file(rank: usize, world: usize) -> String {
    format!("optimizer-rank-{rank}-of-{world}.safetensors")
}

/// Writes `rank`'s `moments` into `dir`; rank 0 also writes the layout with the step and settings.
pub fn write_shard(
    dir: &Path,
    partition: &Partition,
    rank: usize,
    moments: &HostMoments,
    step: u64,
    config: AdamWConfig,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let tensors: Vec<(String, HostTensor)> = moments
        .iter()
        .flat_map(|(path, (first, second))| {
            [("exp_avg", first), ("exp_avg_sq", second)].map(|(kind, values)| {
                (format!("{kind}.{path}"), HostTensor { shape: vec![values.len()], values: values.clone() })
            })
        })
        .collect();
    let refs: Vec<&(String, HostTensor)> = tensors.iter().collect();
    write_safetensors_file(&dir.join(shard_file(rank, partition.world())), &refs, StorageDtype::F32)?;
    if rank == 0 {
        let params: Vec<Value> = partition.params().iter().map(|(path, _, len)| json!([path, len])).collect();
        // Uniform windows are told by their chunk; stage 3's, one per gather unit, window by window.
        let cut = match partition.uniform_chunk() {
            Some(chunk) => json!({"chunk": chunk}),
            None => {
                let windows: Vec<Value> =
                    partition.all_windows().iter().map(|w| json!([w.start, w.end, w.chunk])).collect();
                json!({"windows": windows})
            }
        };
        let mut layout = json!({"world": partition.world(), "params": params});
        if let (Some(layout), Some(cut)) = (layout.as_object_mut(), cut.as_object()) {
            layout.extend(cut.clone());
        }
        let meta = json!({"step": step, "config": config, SHARDED_KEY: layout});
        let path = dir.join(OPTIMIZER_META_FILE);
        write_atomic(&path, meta.to_string().as_bytes())?;
    }
    Ok(())
}

/// A checkpoint's optimizer step and, when it is in shards, the layout that wrote them (`None`: one whole file).
pub fn saved_layout(dir: &Path) -> Result<(u64, Option<Partition>)> {
    let path = dir.join(OPTIMIZER_META_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| CoreError::io(&path, e))?;
    let meta: Value = serde_json::from_str(&text).map_err(|e| CoreError::json(&path, &e))?;
    let bad = |key: &str| AccelError::Core(CoreError::key(&path, key, "missing or malformed"));
    let step = meta["step"].as_u64().ok_or_else(|| bad("step"))?;
    let Some(layout) = meta.get(SHARDED_KEY) else { return Ok((step, None)) };
    let world = layout["world"].as_u64().ok_or_else(|| bad("zero.world"))? as usize;
    let params = layout["params"].as_array().ok_or_else(|| bad("zero.params"))?;
    let sizes = params
        .iter()
        .map(|p| Some((p[0].as_str()?.to_string(), p[1].as_u64()? as usize)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("zero.params"))?;
    if let Some(windows) = layout.get("windows") {
        let windows = windows
            .as_array()
            .and_then(|all| {
                all.iter()
                    .map(|w| {
                        let [start, end, chunk] = [0, 1, 2].map(|i| w[i].as_u64().map(|v| v as usize));
                        Some(Window { start: start?, end: end?, chunk: chunk? })
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad("zero.windows"))?;
        // Contiguous from the first element to the last, each window's chunks covering it.
        let total: usize = sizes.iter().map(|(_, n)| n).sum();
        let mut next = 0;
        for w in &windows {
            if w.start != next || w.end < w.start || w.chunk * world < w.end - w.start {
                return Err(bad("zero.windows"));
            }
            next = w.end;
        }
        if next != total || world == 0 {
            return Err(bad("zero.windows"));
        }
        return Ok((step, Some(Partition::with_windows(&sizes, world, windows))));
    }
    let chunk = layout["chunk"].as_u64().ok_or_else(|| bad("zero.chunk"))? as usize;
    Ok((step, Some(Partition::with_chunk(&sizes, world, chunk))))
}

/// The shares `now` gives `rank` (by path, in its segments' order) of the moments that `saved`'s ranks wrote in
/// `dir`: each parameter put together from the files that hold parts of it, then cut to this rank's segments.
pub fn read_shares(dir: &Path, saved: &Partition, now: &Partition, rank: usize) -> Result<HostMoments> {
    let ours: Vec<(&str, usize)> = now.params().iter().map(|(p, _, n)| (p.as_str(), *n)).collect();
    let theirs: Vec<(&str, usize)> = saved.params().iter().map(|(p, _, n)| (p.as_str(), *n)).collect();
    if ours != theirs {
        let meta = dir.join(OPTIMIZER_META_FILE);
        let differ = ours.iter().zip(&theirs).find(|(a, b)| a != b).map_or_else(
            || format!("{} trainable parameters here, {} saved", ours.len(), theirs.len()),
            |(a, b)| format!("{} ({} values) here, {} ({} values) saved", a.0, a.1, b.0, b.1),
        );
        return Err(AccelError::Core(CoreError::key(&meta, "zero.params", format!("another model: {differ}"))));
    }
    let files: Vec<TensorFiles> = (0..saved.world())
        .map(|r| TensorFiles::open_files(vec![dir.join(shard_file(r, saved.world()))]))
        .collect::<std::result::Result<_, _>>()?;
    let saved_segments: Vec<BTreeMap<String, Vec<crate::partition::Segment>>> =
        (0..saved.world()).map(|r| saved.segments(r).into_iter().collect()).collect();
    let mut shares = HostMoments::new();
    for (path, segments) in now.segments(rank) {
        let len = now.params().iter().find(|(p, _, _)| *p == path).map_or(0, |(_, _, n)| *n);
        let mut whole = (vec![0.0f32; len], vec![0.0f32; len]);
        for (r, file) in files.iter().enumerate() {
            let Some(theirs) = saved_segments[r].get(&path) else { continue };
            let parts = [format!("exp_avg.{path}"), format!("exp_avg_sq.{path}")];
            if !file.names().any(|n| n == parts[0]) {
                // That rank had no state for the parameter yet (never stepped): zeros, as Adam starts.
                continue;
            }
            let total: usize = theirs.iter().map(|s| s.len).sum();
            let first = file.read(&parts[0], &[total])?.values;
            let second = file.read(&parts[1], &[total])?.values;
            let mut at = 0;
            for s in theirs {
                whole.0[s.param_offset..s.param_offset + s.len].copy_from_slice(&first[at..at + s.len]);
                whole.1[s.param_offset..s.param_offset + s.len].copy_from_slice(&second[at..at + s.len]);
                at += s.len;
            }
        }
        let cut = |values: &[f32]| -> Vec<f32> {
            segments.iter().flat_map(|s| values[s.param_offset..s.param_offset + s.len].iter().copied()).collect()
        };
        shares.insert(path, (cut(&whole.0), cut(&whole.1)));
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each parameter's two moments: distinct values everywhere, so a misplaced element shows.
    fn whole(sizes: &[(String, usize)]) -> BTreeMap<String, (Vec<f32>, Vec<f32>)> {
        let mut next = 0.0f32;
        sizes
            .iter()
            .map(|(path, n)| {
                let first: Vec<f32> = (0..*n)
                    .map(|_| {
                        next += 1.0;
                        next
                    })
                    .collect();
                let second = first.iter().map(|v| -v).collect();
                (path.clone(), (first, second))
            })
            .collect()
    }

    /// What `partition` gives `rank` of `moments`.
    fn cut(moments: &HostMoments, partition: &Partition, rank: usize) -> HostMoments {
        partition
            .segments(rank)
            .into_iter()
            .map(|(path, segments)| {
                let (first, second) = &moments[&path];
                let take = |v: &[f32]| -> Vec<f32> {
                    segments.iter().flat_map(|s| v[s.param_offset..s.param_offset + s.len].iter().copied()).collect()
                };
                (path, (take(first), take(second)))
            })
            .collect()
    }

    #[test]
    fn shares_written_by_one_number_of_ranks_are_read_back_by_any_other() {
        let sizes: Vec<(String, usize)> = [("a", 7), ("b", 13), ("c", 5), ("d", 1)].map(|(p, n)| (p.into(), n)).into();
        let moments = whole(&sizes);
        // Stage 3's layout: a window per unit (here a and b one unit, c and d others).
        let unit = |path: &str| if path == "b" { "a".to_string() } else { path.to_string() };
        let layouts = [(4, 6), (4, usize::MAX), (3, 4), (1, usize::MAX)]
            .map(|(world, bucket)| Partition::new(&sizes, world, bucket))
            .into_iter()
            .chain([4, 3].map(|world| Partition::by_unit(&sizes, world, unit)));
        for saved in layouts {
            let saved_world = saved.world();
            let dir = tempfile::tempdir().unwrap();
            for rank in 0..saved_world {
                write_shard(dir.path(), &saved, rank, &cut(&moments, &saved, rank), 5, AdamWConfig::default()).unwrap();
            }
            let (step, layout) = saved_layout(dir.path()).unwrap();
            assert_eq!((step, layout.as_ref()), (5, Some(&saved)), "the layout is recorded");
            let uniform =
                [(1, usize::MAX), (2, 5), (5, 3), (4, 6)].map(|(world, bucket)| Partition::new(&sizes, world, bucket));
            for now in uniform.into_iter().chain([2, 5].map(|world| Partition::by_unit(&sizes, world, unit))) {
                let world = now.world();
                for rank in 0..world {
                    let read = read_shares(dir.path(), &saved, &now, rank).unwrap();
                    assert_eq!(read, cut(&moments, &now, rank), "{saved_world} ranks -> {world}, rank {rank}");
                }
            }
        }
    }

    #[test]
    fn shares_of_another_model_are_refused_naming_the_parameter() {
        let dir = tempfile::tempdir().unwrap();
        let sizes: Vec<(String, usize)> = vec![("a".into(), 4), ("b".into(), 4)];
        let saved = Partition::new(&sizes, 2, usize::MAX);
        for rank in 0..2 {
            write_shard(dir.path(), &saved, rank, &cut(&whole(&sizes), &saved, rank), 1, AdamWConfig::default())
                .unwrap();
        }
        let other = Partition::new(&[("a".into(), 4), ("b".into(), 5)], 2, usize::MAX);
        let err = read_shares(dir.path(), &saved, &other, 0).unwrap_err().to_string();
        assert!(err.contains("zero.params") && err.contains("b (5 values) here, b (4 values) saved"), "{err}");
    }
}
