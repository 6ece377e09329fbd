//! The data loader: formats from JSONL and Parquet, loss masks, shuffling, sharding, exact resume, bad rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llmtrain_core::chat::Message;
use llmtrain_core::data::{Batch, DataLoader, DataOptions, LossOn, Split};
use llmtrain_core::tokenizer::{BpeTrainingOptions, TextTokenizer, train_bpe};

fn tokenizer(dir: &Path) -> TextTokenizer {
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat. what is two plus two? four. hello there, how are you?\n".repeat(30),
    )
    .unwrap();
    train_bpe(&[corpus], &BpeTrainingOptions { vocab_size: 320, min_frequency: 2 }).unwrap()
}

fn options(files: Vec<PathBuf>) -> DataOptions {
    DataOptions {
        files,
        seq_len: 24,
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

fn text_rows(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("rows.jsonl");
    let rows: String = (0..n).map(|i| format!("{{\"text\": \"row {i}: the cat sat on the mat\"}}\n")).collect();
    std::fs::write(&path, rows).unwrap();
    path
}

fn take(loader: &mut DataLoader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next_batch().unwrap().unwrap()).collect()
}

#[test]
fn completion_only_masks_the_prompt_and_assistant_only_masks_all_but_assistant_turns() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let path = dir.path().join("sft.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"what is two plus two?\", \"completion\": \" four.\"}\n\
         {\"messages\": [{\"role\": \"user\", \"content\": \"hello there\"}, {\"role\": \"assistant\", \"content\": \"how are you?\"}]}\n",
    )
    .unwrap();
    let mut o = options(vec![path]);
    o.batch_size = 1;
    o.seq_len = 64;
    o.loss_on = LossOn::CompletionOnly;
    let mut loader = DataLoader::new(&o, &tok, Split::Train).unwrap();
    let batch = loader.next_batch().unwrap().unwrap();
    let prompt_len = tok.encode("what is two plus two?").unwrap().len();
    assert!(batch.labels[..prompt_len].iter().all(|&l| l == -100));
    let completion: Vec<u32> =
        batch.labels[prompt_len..].iter().take_while(|&&l| l != -100).map(|&l| l as u32).collect();
    assert_eq!(tok.decode(&completion, false).unwrap(), " four.</s>");

    o.loss_on = LossOn::AssistantOnly;
    let mut loader = DataLoader::new(&o, &tok, Split::Train).unwrap();
    loader.next_batch().unwrap();
    let batch = loader.next_batch().unwrap().unwrap();
    let scored: Vec<u32> = batch.labels.iter().filter(|&&l| l != -100).map(|&l| l as u32).collect();
    // ChatML: the assistant turn's content and its closing tag are scored, nothing of the user's turn.
    assert_eq!(tok.decode(&scored, false).unwrap(), "how are you?<|im_end|>\n");
    let rendered = tok
        .apply_chat_template(&[Message::new("user", "hello there"), Message::new("assistant", "how are you?")], false);
    assert!(rendered.unwrap().starts_with("<|im_start|>user"));
}

#[test]
fn parquet_rows_read_like_jsonl_rows() {
    use parquet::data_type::ByteArray;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let jsonl = text_rows(dir.path(), 6);
    let path = dir.path().join("rows.parquet");
    let schema = Arc::new(parse_message_type("message schema { REQUIRED BYTE_ARRAY text (UTF8); }").unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let mut writer = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    for chunk in [0..3, 3..6] {
        // Two row groups, so reading streams across them.
        let mut group = writer.next_row_group().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> =
            chunk.map(|i| ByteArray::from(format!("row {i}: the cat sat on the mat").as_str())).collect();
        column.typed::<parquet::data_type::ByteArrayType>().write_batch(&values, None, None).unwrap();
        column.close().unwrap();
        group.close().unwrap();
    }
    writer.close().unwrap();
    let from_parquet = take(&mut DataLoader::new(&options(vec![path]), &tok, Split::Train).unwrap(), 3);
    let from_jsonl = take(&mut DataLoader::new(&options(vec![jsonl]), &tok, Split::Train).unwrap(), 3);
    assert_eq!(from_parquet, from_jsonl);
}

#[test]
fn shuffle_is_seeded_sharding_splits_and_seek_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let mut o = options(vec![text_rows(dir.path(), 40)]);
    o.shuffle = true;
    o.packing = true;
    let run = |o: &DataOptions, n| take(&mut DataLoader::new(o, &tok, Split::Train).unwrap(), n);
    assert_eq!(run(&o, 12), run(&o, 12), "same seed, same batches");
    let mut other = o.clone();
    other.seed = 8;
    assert_ne!(run(&o, 4), run(&other, 4), "another seed, another order");

    // Two ranks take alternate batches of the same global stream.
    let global = run(&o, 8);
    for rank in 0..2 {
        let mut r = o.clone();
        r.rank = rank;
        r.world_size = 2;
        let mine = run(&r, 4);
        let want: Vec<Batch> = global.iter().skip(rank).step_by(2).cloned().collect();
        assert_eq!(mine, want, "rank {rank}");
    }

    // Resume after k batches (crossing an epoch boundary) gives what an uninterrupted loader gives.
    let straight = run(&o, 30);
    for k in [0usize, 5, 17, 29] {
        let mut first = DataLoader::new(&o, &tok, Split::Train).unwrap();
        take(&mut first, k);
        let position = first.position();
        let mut resumed = DataLoader::new(&o, &tok, Split::Train).unwrap();
        resumed.seek(position).unwrap();
        assert_eq!(take(&mut resumed, 30 - k), straight[k..], "resume after {k}");
    }
}

#[test]
fn eval_split_is_disjoint_from_train_and_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let mut o = options(vec![text_rows(dir.path(), 40)]);
    o.eval_fraction = 0.25;
    let decode =
        |b: &Batch| -> Vec<String> { b.input_ids.chunks(b.seq).map(|r| tok.decode(r, true).unwrap()).collect() };
    let mut eval = DataLoader::new(&o, &tok, Split::Eval).unwrap();
    let mut eval_rows = Vec::new();
    while let Some(b) = eval.next_batch().unwrap() {
        eval_rows.extend(decode(&b));
    }
    assert_eq!(eval_rows.len(), 10);
    let mut train = DataLoader::single_pass(&o, &tok, Split::Train).unwrap();
    let mut train_rows = Vec::new();
    while let Some(b) = train.next_batch().unwrap() {
        train_rows.extend(decode(&b));
    }
    assert_eq!(train_rows.len(), 30);
    assert!(eval_rows.iter().all(|r| !train_rows.contains(r)));
}

#[test]
fn malformed_rows_fail_with_file_line_and_field_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"text\": \"fine row here\"}\n{\"text\": \"fine\"}\n{\"messages\": \"oops\"}\n{\"text\": \"ok\"}\n{not json\n")
        .unwrap();
    let mut o = options(vec![path.clone()]);
    o.batch_size = 1;
    // Rows are read a block at a time, so the bad row stops the loader at its first batch.
    let mut loader = DataLoader::new(&o, &tok, Split::Train).unwrap();
    let err = loader.next_batch().unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{}:3: field `messages`: expected a list of {{role, content}} objects, found a string", path.display())
    );
    o.skip_malformed = true;
    let mut loader = DataLoader::new(&o, &tok, Split::Train).unwrap();
    take(&mut loader, 5);
    assert_eq!(loader.skipped_rows(), 2, "counted once, not again in the second epoch");
    let preference = dir.path().join("pref.jsonl");
    std::fs::write(&preference, "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n").unwrap();
    let err = DataLoader::new(&options(vec![preference]), &tok, Split::Train).unwrap().next_batch().unwrap_err();
    assert!(err.to_string().contains("pref.jsonl:1: a preference row needs a preference"), "{err}");
}
