//! Tokenization and loss labels: text rows, prompt/completion under completion-only loss (strings and
//! conversations), messages under assistant-only loss, truncation, and plain-text documents cut into chunks.

use std::path::{Path, PathBuf};

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

fn options(file: PathBuf, loss_on: LossOn) -> DataOptions {
    DataOptions {
        files: vec![file],
        seq_len: 96,
        batch_size: 1,
        packing: false,
        shuffle: false,
        seed: 0,
        loss_on,
        skip_malformed: false,
        eval_fraction: 0.0,
        rank: 0,
        world_size: 1,
    }
}

/// The (unpadded) ids and labels of every row of one epoch.
fn rows(tok: &TextTokenizer, o: &DataOptions) -> Vec<(Vec<u32>, Vec<i64>)> {
    let mut loader = DataLoader::single_pass(o, tok, Split::Train).unwrap();
    let mut out = Vec::new();
    while let Some(Batch { input_ids, labels, .. }) = loader.next_batch().unwrap() {
        let pad = tok.token_id("<pad>").unwrap();
        let len = input_ids.iter().rposition(|&t| t != pad).map_or(0, |i| i + 1);
        assert!(labels[len..].iter().all(|&l| l == -100), "padding is never scored");
        out.push((input_ids[..len].to_vec(), labels[..len].to_vec()));
    }
    out
}

/// The text of each maximal run of scored tokens.
fn scored_runs(tok: &TextTokenizer, ids: &[u32], labels: &[i64]) -> Vec<String> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut open = false;
    for (&id, &label) in ids.iter().zip(labels) {
        if label == -100 {
            open = false;
            continue;
        }
        assert_eq!(label, i64::from(id), "a scored label is the token itself (unshifted)");
        if !open {
            runs.push(Vec::new());
            open = true;
        }
        runs.last_mut().unwrap().push(id);
    }
    runs.iter().map(|r| tok.decode(r, false).unwrap()).collect()
}

fn write(dir: &Path, name: &str, lines: &[serde_json::Value]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    path
}

#[test]
fn text_rows_get_bos_and_eos_and_are_truncated_to_seq_len() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let path = write(dir.path(), "text.jsonl", &[serde_json::json!({"text": "the cat sat on the mat."})]);
    let got = rows(&tok, &options(path.clone(), LossOn::CompletionOnly));
    let mut want = tok.encode("the cat sat on the mat.").unwrap();
    assert_eq!(want[0], tok.token_id("<s>").unwrap());
    want.push(tok.eos_token_id().unwrap());
    assert_eq!(got, vec![(want.clone(), want.iter().map(|&t| i64::from(t)).collect())]);

    let mut short = options(path, LossOn::All);
    short.seq_len = 4;
    assert_eq!(rows(&tok, &short)[0].0, want[..4]);
}

#[test]
fn completion_only_masks_the_prompt_of_string_and_conversational_rows() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let user = serde_json::json!([{"role": "user", "content": "what is two plus two?"}]);
    let assistant = serde_json::json!([{"role": "assistant", "content": "four."}]);
    let path = write(
        dir.path(),
        "pc.jsonl",
        &[
            serde_json::json!({"prompt": "what is two plus two?", "completion": " four."}),
            serde_json::json!({"prompt": user, "completion": assistant}),
        ],
    );
    let got = rows(&tok, &options(path.clone(), LossOn::CompletionOnly));
    // Strings: the prompt with special tokens (BOS), the completion without, then EOS.
    let prompt = tok.encode("what is two plus two?").unwrap();
    let mut completion = tok.encode_with(" four.", false).unwrap();
    completion.push(tok.eos_token_id().unwrap());
    assert_eq!(got[0].0, [prompt.clone(), completion.clone()].concat());
    let masked = vec![-100; prompt.len()];
    assert_eq!(got[0].1, [masked, completion.iter().map(|&t| i64::from(t)).collect()].concat());
    // Conversations: the completion is what the template adds after the generation prompt.
    assert_eq!(
        tok.decode(&got[1].0, false).unwrap(),
        "<|im_start|>user\nwhat is two plus two?<|im_end|>\n<|im_start|>assistant\nfour.<|im_end|>\n"
    );
    assert_eq!(scored_runs(&tok, &got[1].0, &got[1].1), vec!["four.<|im_end|>\n"]);

    // LossOn::All scores the prompt too.
    let all = rows(&tok, &options(path, LossOn::All));
    assert!(all.iter().all(|(ids, labels)| labels.iter().zip(ids).all(|(&l, &t)| l == i64::from(t))));
}

#[test]
fn assistant_only_scores_exactly_the_assistant_turns() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let messages = [
        Message::new("system", "be brief"),
        Message::new("user", "hello there"),
        Message::new("assistant", "how are you?"),
        Message::new("user", "what is two plus two?"),
        Message::new("assistant", "four."),
    ];
    let path = write(dir.path(), "chat.jsonl", &[serde_json::json!({ "messages": messages })]);
    let got = rows(&tok, &options(path.clone(), LossOn::AssistantOnly));
    let (ids, labels) = &got[0];
    assert_eq!(tok.decode(ids, false).unwrap(), tok.apply_chat_template(&messages, false).unwrap());
    assert_eq!(scored_runs(&tok, ids, labels), vec!["how are you?<|im_end|>\n", "four.<|im_end|>\n"]);

    // Completion-only leaves `messages` rows whole, as TRL does.
    let whole = rows(&tok, &options(path, LossOn::CompletionOnly));
    assert_eq!(scored_runs(&tok, &whole[0].0, &whole[0].1), vec![tok.decode(ids, false).unwrap()]);
}

#[test]
fn plain_text_documents_are_cut_into_consecutive_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let path = dir.path().join("book.txt");
    let text = "the cat sat on the mat.\nwhat is two plus two? four.\n".repeat(6);
    std::fs::write(&path, &text).unwrap();
    let mut o = options(path, LossOn::AssistantOnly);
    o.seq_len = 16;
    let got = rows(&tok, &o);
    let mut want = tok.encode(&text).unwrap();
    want.push(tok.eos_token_id().unwrap());
    assert!(got.len() > 3);
    assert!(got[..got.len() - 1].iter().all(|(ids, _)| ids.len() == 16), "full chunks but the last");
    assert_eq!(got.iter().flat_map(|(ids, _)| ids.clone()).collect::<Vec<_>>(), want);
}
