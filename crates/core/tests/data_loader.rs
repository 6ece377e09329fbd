//! The loader: packing, seeded shuffling, sharding by rank, exact resume, the eval split, and skipped rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmtrain_core::data::{Batch, DataLoader, DataOptions, DataPosition, LossOn, Split};
use llmtrain_core::tokenizer::{BpeTrainingOptions, TextTokenizer, train_bpe};

fn tokenizer(dir: &Path) -> TextTokenizer {
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "row 0123456789: the cat sat on the mat and then it sat on the hat\n".repeat(30)).unwrap();
    train_bpe(&[corpus], &BpeTrainingOptions { vocab_size: 320, min_frequency: 2 }).unwrap()
}

fn options(files: Vec<PathBuf>) -> DataOptions {
    DataOptions {
        files,
        seq_len: 32,
        batch_size: 2,
        packing: false,
        shuffle: false,
        seed: 7,
        loss_on: LossOn::All,
        skip_malformed: false,
        eval_fraction: 0.0,
        rank: 0,
        world_size: 1,
    }
}

/// `n` text rows of varied lengths, each starting with its number.
fn text_rows(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("rows.jsonl");
    let words = ["the cat", "sat on the mat", "and then it sat on the hat", "the mat"];
    let rows: String =
        (0..n).map(|i| format!("{{\"text\": \"row {i}: {}\"}}\n", words[..1 + i % 4].join(" "))).collect();
    std::fs::write(&path, rows).unwrap();
    path
}

fn take(loader: &mut DataLoader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next_batch().unwrap().unwrap()).collect()
}

fn run(tok: &TextTokenizer, o: &DataOptions, n: usize) -> Vec<Batch> {
    take(&mut DataLoader::new(o, tok, Split::Train).unwrap(), n)
}

fn all_batches(tok: &TextTokenizer, o: &DataOptions, split: Split) -> Vec<Batch> {
    let mut loader = DataLoader::single_pass(o, tok, split).unwrap();
    std::iter::from_fn(|| loader.next_batch().unwrap()).collect()
}

/// The sequences of a batch: rows cut where position ids restart (packed) or the unpadded rows (unpacked).
fn sequences(tok: &TextTokenizer, batch: &Batch) -> Vec<String> {
    let pad = tok.token_id("<pad>").unwrap();
    let mut out = Vec::new();
    for r in 0..batch.rows {
        let ids = &batch.input_ids[r * batch.seq..(r + 1) * batch.seq];
        let mut starts: Vec<usize> = match &batch.position_ids {
            Some(p) => (0..batch.seq).filter(|&t| p[r * batch.seq + t] == 0).collect(),
            None => vec![0],
        };
        starts.push(batch.seq);
        for w in starts.windows(2) {
            let seq: Vec<u32> = ids[w[0]..w[1]].iter().copied().filter(|&t| t != pad).collect();
            if !seq.is_empty() {
                out.push(tok.decode(&seq, true).unwrap());
            }
        }
    }
    out
}

fn multiset(items: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

#[test]
fn packing_fills_rows_with_whole_sequences_once_each_and_restarts_positions() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let mut o = options(vec![text_rows(dir.path(), 40)]);
    let unpacked = all_batches(&tok, &o, Split::Train);
    assert!(unpacked.iter().all(|b| b.position_ids.is_none()));
    let want = multiset(unpacked.iter().flat_map(|b| sequences(&tok, b)));
    assert_eq!(want.values().sum::<usize>(), 40);

    o.packing = true;
    o.shuffle = true;
    o.batch_size = 1; // nothing dropped at the end of the pass
    let packed = all_batches(&tok, &o, Split::Train);
    // Best-fit decreasing needs at most 11/9 of the optimum (+1), which needs at least tokens / seq_len rows.
    let pad = tok.token_id("<pad>").unwrap();
    let tokens = unpacked.iter().flat_map(|b| &b.input_ids).filter(|&&t| t != pad).count();
    let least = tokens.div_ceil(32);
    assert!(packed.len() <= least * 11 / 9 + 1 && packed.len() < 40, "{} rows for {tokens} tokens", packed.len());
    assert_eq!(multiset(packed.iter().flat_map(|b| sequences(&tok, b))), want, "every sequence exactly once, whole");
    for b in &packed {
        assert_eq!((b.rows, b.seq, b.input_ids.len(), b.labels.len()), (1, 32, 32, 32));
        let positions = b.position_ids.as_ref().unwrap();
        for t in 0..b.seq {
            // Positions count up within a sequence and restart at 0 at each sequence (padding included).
            assert!(positions[t] == 0 || (t > 0 && positions[t] == positions[t - 1] + 1));
            let scored = b.labels[t] != -100;
            let is_pad = b.input_ids[t] == pad;
            let starts_later_sequence = positions[t] == 0 && t > 0;
            assert_eq!(scored, !is_pad && !starts_later_sequence, "token {t}: {b:?}");
        }
        let real = b.input_ids.iter().filter(|&&t| t != pad).count();
        let starts = (1..b.seq).filter(|&t| positions[t] == 0 && b.input_ids[t] != pad).count();
        assert_eq!(b.scored_tokens(), real - 1 - starts, "a packed sequence's first token is not predicted");
    }
}

#[test]
fn shuffling_is_seeded_and_differs_by_seed_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let mut o = options(vec![text_rows(dir.path(), 40)]);
    let in_order = run(&tok, &o, 20);
    o.shuffle = true;
    let shuffled = run(&tok, &o, 40);
    assert_eq!(shuffled, run(&tok, &o, 40), "same seed, same batches");
    assert_ne!(shuffled[..20], in_order[..], "shuffled");
    let (epoch0, epoch1) = shuffled.split_at(20);
    assert_ne!(epoch0, epoch1, "reshuffled each epoch");
    let seqs = |b: &[Batch]| multiset(b.iter().flat_map(|b| sequences(&tok, b)));
    assert_eq!(seqs(epoch0), seqs(epoch1), "an epoch is a permutation");
    assert_eq!(seqs(epoch0), seqs(&in_order));
    let mut other = o.clone();
    other.seed = 8;
    assert_ne!(run(&tok, &other, 20), epoch0, "another seed, another order");
}

#[test]
fn ranks_take_disjoint_interleaved_shares_of_the_global_stream() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let mut o = options(vec![text_rows(dir.path(), 41)]);
    o.shuffle = true;
    o.packing = true;
    let global = all_batches(&tok, &o, Split::Train);
    let world = 3;
    let full_groups = global.len() / world;
    let mut union = Vec::new();
    for rank in 0..world {
        let mut r = o.clone();
        r.rank = rank;
        r.world_size = world;
        let mine = all_batches(&tok, &r, Split::Train);
        assert_eq!(mine.len(), full_groups, "rank {rank}: same count, incomplete tail group dropped");
        let want: Vec<Batch> = global.iter().skip(rank).step_by(world).take(full_groups).cloned().collect();
        assert_eq!(mine, want, "rank {rank}");
        union.extend(mine);
    }
    assert_eq!(multiset(union.iter().flat_map(|b| sequences(&tok, b))).values().sum::<usize>(), {
        let kept = &global[..full_groups * world];
        kept.iter().map(|b| sequences(&tok, b).len()).sum::<usize>()
    });
}

#[test]
fn eval_ranks_together_score_every_held_out_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let mut o = options(vec![text_rows(dir.path(), 83)]);
    o.packing = true;
    o.eval_fraction = 0.5;
    o.batch_size = 1;
    let global = all_batches(&tok, &o, Split::Eval);
    let world = 3;
    assert_ne!(global.len() % world, 0, "the test needs an incomplete last group");
    let mut union = Vec::new();
    for rank in 0..world {
        let mut r = o.clone();
        r.rank = rank;
        r.world_size = world;
        let mine = all_batches(&tok, &r, Split::Eval);
        let want: Vec<Batch> = global.iter().skip(rank).step_by(world).cloned().collect();
        assert_eq!(mine, want, "rank {rank}: its batches of every group, the last one included");
        union.extend(mine);
    }
    assert_eq!(union.len(), global.len());
}

#[test]
fn seek_resumes_exactly_where_an_uninterrupted_loader_would_be() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let mut o = options(vec![text_rows(dir.path(), 40)]);
    o.shuffle = true;
    o.packing = true;
    for world_size in [1, 2] {
        o.world_size = world_size;
        o.rank = world_size - 1;
        let mut straight = DataLoader::new(&o, &tok, Split::Train).unwrap();
        let mut batches = Vec::new();
        let mut positions = Vec::new();
        for _ in 0..14 {
            positions.push(straight.position());
            batches.push(straight.next_batch().unwrap().unwrap());
        }
        assert!(positions.iter().any(|p| p.epoch > 0), "crosses an epoch boundary: {positions:?}");
        for k in [0, 3, 8, 13] {
            let mut resumed = DataLoader::new(&o, &tok, Split::Train).unwrap();
            resumed.seek(positions[k]).unwrap();
            assert_eq!(resumed.position(), positions[k]);
            assert_eq!(take(&mut resumed, 14 - k), batches[k..], "world {world_size}, resumed after {k}");
        }
    }
    let mut loader = DataLoader::new(&o, &tok, Split::Train).unwrap();
    let err = loader.seek(DataPosition { epoch: 0, batch_in_epoch: 1000 }).unwrap_err().to_string();
    assert!(err.starts_with("cannot resume the data at epoch 0 batch 1000"), "{err}");
}

#[test]
fn eval_split_is_a_deterministic_disjoint_share_and_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let mut o = options(vec![text_rows(dir.path(), 40)]);
    o.batch_size = 3;
    let everything = multiset(all_batches(&tok, &{ o.clone() }, Split::Eval).iter().flat_map(|b| sequences(&tok, b)));
    assert!(everything.is_empty(), "no eval split without eval_fraction");
    o.eval_fraction = 0.25;
    o.shuffle = true;
    let mut eval = DataLoader::new(&o, &tok, Split::Eval).unwrap();
    let eval_batches: Vec<Batch> = std::iter::from_fn(|| eval.next_batch().unwrap()).collect();
    assert!(eval.next_batch().unwrap().is_none(), "stays done");
    assert_eq!(eval_batches.last().unwrap().rows, 1, "the eval split keeps its last partial batch");
    let eval_seqs: Vec<String> = eval_batches.iter().flat_map(|b| sequences(&tok, b)).collect();
    assert_eq!(eval_seqs.len(), 10);
    // Sequence i (in file order, whatever the shuffle) is held out iff floor((i + 1) / 4) > floor(i / 4).
    let row_number = |s: &String| -> usize { s[4..s.find(':').unwrap()].parse().unwrap() };
    assert_eq!(eval_seqs.iter().map(row_number).collect::<Vec<_>>(), (0..10).map(|k| 4 * k + 3).collect::<Vec<_>>());
    let mut train_o = o.clone();
    train_o.batch_size = 1;
    let train_seqs: Vec<String> =
        all_batches(&tok, &train_o, Split::Train).iter().flat_map(|b| sequences(&tok, b)).collect();
    assert_eq!(train_seqs.len(), 30);
    assert!(eval_seqs.iter().all(|s| !train_seqs.contains(s)), "disjoint");
    let union = multiset(eval_seqs.into_iter().chain(train_seqs));
    o.eval_fraction = 0.0;
    o.batch_size = 1;
    let whole = multiset(all_batches(&tok, &o, Split::Train).iter().flat_map(|b| sequences(&tok, b)));
    assert_eq!(union, whole, "together they cover everything");
}

#[test]
fn malformed_rows_are_skipped_and_counted_once_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"text\": \"the cat sat\"}\n{\"text\": 5}\n{\"text\": \"on the mat\"}\n{not json\n{\"text\": \"the hat\"}\n",
    )
    .unwrap();
    let mut o = options(vec![path.clone()]);
    o.batch_size = 1;
    let err = DataLoader::new(&o, &tok, Split::Train).unwrap().next_batch().unwrap_err().to_string();
    assert_eq!(err, format!("{}:2: field `text`: expected a string, found a number", path.display()));

    o.skip_malformed = true;
    let mut loader = DataLoader::new(&o, &tok, Split::Train).unwrap();
    let batches = take(&mut loader, 7);
    assert_eq!(loader.position(), DataPosition { epoch: 2, batch_in_epoch: 1 });
    assert_eq!(loader.skipped_rows(), 2, "counted once, not again in later epochs");
    let texts: Vec<String> = batches[..3].iter().flat_map(|b| sequences(&tok, b)).collect();
    assert_eq!(texts, ["the cat sat", "on the mat", "the hat"]);
    let mut resumed = DataLoader::new(&o, &tok, Split::Train).unwrap();
    resumed.seek(DataPosition { epoch: 1, batch_in_epoch: 2 }).unwrap();
    assert_eq!(resumed.skipped_rows(), 2, "a resumed loader counts them too");

    // Nothing usable at all: a one-line error, not an endless loop.
    std::fs::write(&path, "{\"text\": 5}\n").unwrap();
    let err = DataLoader::new(&o, &tok, Split::Train).unwrap().next_batch().unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "the training split of the data holds no sequence (1 malformed rows skipped); files: {}",
            path.display()
        )
    );
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let o = options(vec![text_rows(dir.path(), 4)]);
    let check = |change: fn(&mut DataOptions), want: &str| {
        let mut bad = o.clone();
        change(&mut bad);
        let err = DataLoader::new(&bad, &tok, Split::Train).err().unwrap().to_string();
        assert_eq!(err, want);
    };
    check(|o| o.rank = 2, "data: rank 2 must be below world_size 1");
    check(|o| o.eval_fraction = 1.0, "data: eval_fraction must be in [0, 1), got 1");
    check(|o| o.seq_len = 1, "data: seq_len must be at least 2, got 1");
    check(|o| o.files.clear(), "data: no files given");
    let mut few = o.clone();
    few.batch_size = 8;
    let err = DataLoader::new(&few, &tok, Split::Train).unwrap().next_batch().unwrap_err().to_string();
    assert_eq!(
        err,
        "the training split of the data fills no batch: its 4 sequences make 4 rows of 32 tokens, fewer than \
         batch_size 8 x world_size 1"
    );
}
