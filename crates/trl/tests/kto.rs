//! KTO against TRL 1.16's KTOTrainer: `fixtures/kto.json` holds, for each case (weights, loss type, batch and
//! accumulation), the ids and KL pairs TRL's preprocessing made, the per-row log-probs its loss took, and its
//! first log record (made by `scripts/make_orpo_kto_fixtures.py`).

use llmtrain_core::data::Row;
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_trl::kto::{KtoLogps, KtoLoss, KtoLossType, assign_kl_completions, kto_item_from_row};
use serde_json::Value;

use crate::common::column;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kto.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn rows_and_their_kl_pairs_are_built_as_kto_trainer_builds_them() {
    let fixture = fixture();
    let tokenizer =
        TextTokenizer::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dpo_tokenizer").as_ref()).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let mut items: Vec<_> = fixture["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| kto_item_from_row(&tokenizer, &Row::parse(row).unwrap(), 1024).unwrap().unwrap())
            .collect();
        assign_kl_completions(&mut items, case["batch"].as_u64().unwrap() as usize);
        for (item, theirs) in items.iter().zip(case["tokenized"].as_array().unwrap()) {
            assert_eq!(item.prompt, ids(&theirs["prompt_ids"]), "{}", case["name"]);
            assert_eq!(item.completion, ids(&theirs["completion_ids"]), "{}", case["name"]);
            assert_eq!(item.desirable, theirs["label"].as_bool().unwrap());
            if case["loss_type"] == "kto" {
                assert_eq!(item.kl_completion, ids(&theirs["KL_completion_ids"]), "{}", case["name"]);
            }
        }
    }
}

#[test]
fn the_loss_and_kl_match_trl_from_the_same_log_probs() {
    let fixture = fixture();
    let labels: Vec<bool> = fixture["rows"].as_array().unwrap().iter().map(|r| r["label"].as_bool().unwrap()).collect();
    for case in fixture["cases"].as_array().unwrap().iter().filter(|case| case["accum"] == 1) {
        let inputs = &case["inputs"];
        let loss_type = if case["loss_type"] == "kto" { KtoLossType::Kto } else { KtoLossType::ApoZeroUnpaired };
        let loss = KtoLoss {
            beta: case["beta"].as_f64().unwrap(),
            loss_type,
            desirable_weight: case["desirable_weight"].as_f64().unwrap(),
            undesirable_weight: case["undesirable_weight"].as_f64().unwrap(),
        };
        let logps = KtoLogps {
            policy: column(&inputs["policy_matched_logps"]),
            reference: column(&inputs["reference_matched_logps"]),
            policy_kl: column(inputs.get("policy_KL_logps").unwrap_or(&inputs["policy_matched_logps"])),
            reference_kl: column(inputs.get("reference_KL_logps").unwrap_or(&inputs["reference_matched_logps"])),
            desirable: labels.clone(),
        };
        let kl = KtoLoss::kl(loss.kl_mean(&logps));
        let log = &case["log"];
        assert!((kl - log["kl"].as_f64().unwrap()).abs() <= 1e-5, "{}: kl {kl} vs {}", case["name"], log["kl"]);
        let ours = f64::from(loss.loss(&logps, kl).into_scalar());
        assert!(
            (ours - log["loss"].as_f64().unwrap()).abs() <= 1e-5,
            "{}: loss {ours} vs {}",
            case["name"],
            log["loss"]
        );
    }
}
