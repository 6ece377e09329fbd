//! ORPO against TRL 1.16's ORPOTrainer: `fixtures/orpo.json` holds, for each case (β, and a tokenizer with a BOS
//! token), the ids TRL's preprocessing gave each row, the averaged log-probs and NLL its loss took, and its first
//! log record (made by `scripts/make_orpo_kto_fixtures.py`).

use burn::tensor::Tensor;
use llmtrain_core::data::Row;
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_trl::orpo::{OrpoLogps, OrpoLoss, OrpoMetrics, OrpoPair, orpo_pair_from_row};
use serde_json::Value;

use crate::common::column;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/orpo.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<i64> {
    value.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

/// TRL's input ids and labels as llmtrain's (prompt part, answer) split.
fn split(input_ids: &Value, labels: &Value) -> (Vec<u32>, Vec<u32>) {
    let (input_ids, labels) = (ids(input_ids), ids(labels));
    let prompt = labels.iter().take_while(|&&l| l == -100).count();
    let as_u32 = |v: &[i64]| v.iter().map(|&t| t as u32).collect();
    (as_u32(&input_ids[..prompt]), as_u32(&input_ids[prompt..]))
}

#[test]
fn rows_tokenize_as_orpo_trainer_tokenizes_them_with_and_without_a_bos_token() {
    let fixture = fixture();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dpo_tokenizer");
    for case in fixture["cases"].as_array().unwrap() {
        let mut tokenizer = TextTokenizer::load(dir.as_ref()).unwrap();
        if case["bos_token_id"].is_number() {
            tokenizer.bos_token = tokenizer.eos_token.clone();
        }
        for (row, theirs) in fixture["rows"].as_array().unwrap().iter().zip(case["tokenized"].as_array().unwrap()) {
            let row = Row::parse(row).unwrap();
            let ours = orpo_pair_from_row(&tokenizer, &row, 1024).unwrap().unwrap();
            let expected = OrpoPair {
                chosen: split(&theirs["chosen_input_ids"], &theirs["chosen_labels"]),
                rejected: split(&theirs["rejected_input_ids"], &theirs["rejected_labels"]),
            };
            assert_eq!(ours, expected, "{}: {row:?}", case["name"]);
        }
    }
}

#[test]
fn the_loss_and_every_pair_metric_match_trl_from_the_same_log_probs() {
    for case in fixture()["cases"].as_array().unwrap() {
        let inputs = &case["inputs"];
        let logps = OrpoLogps {
            chosen: column(&inputs["chosen_logps"]),
            rejected: column(&inputs["rejected_logps"]),
            nll: Tensor::from_data([inputs["nll_loss"].as_f64().unwrap() as f32], &Default::default()),
        };
        let loss = OrpoLoss { beta: case["beta"].as_f64().unwrap() };
        let log = &case["log"];
        let ours = f64::from(loss.loss(&logps).into_scalar());
        assert!(
            (ours - log["loss"].as_f64().unwrap()).abs() <= 1e-5,
            "{}: loss {ours} vs {}",
            case["name"],
            log["loss"]
        );
        for (name, ours) in loss.metrics(&logps).named() {
            let theirs = log[name].as_f64().unwrap();
            assert!((ours - theirs).abs() <= 1e-5, "{}: {name}: {ours} vs TRL {theirs}", case["name"]);
        }
        assert_eq!(OrpoMetrics::NAMES.len(), 9);
    }
}
