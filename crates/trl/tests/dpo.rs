//! DPO against TRL 1.16 itself: `fixtures/dpo_losses.json` holds, for each loss type, the per-sequence log-probs
//! DPOTrainer computed at step 1 and what it logged, and the token ids its dataset preparation gave each row with
//! the tokenizer in `fixtures/dpo_tokenizer/` (all made by `scripts/make_dpo_fixture.py`).

use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_trl::dpo::{
    Dpo, DpoLoss, DpoMetrics, LossType, PairBatch, SequenceLogps, TokenizedPair, sequence_logps, tokenize_pair,
};
use llmtrain_trl::policy::PolicyModule;
use llmtrain_trl::reference::Reference;
use serde_json::Value;

use crate::common::column;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dpo_losses.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's rows, tokenized by llmtrain.
fn fixture_pairs(fixture: &Value, tokenizer: &TextTokenizer) -> Vec<TokenizedPair> {
    let rows = fixture["rows"].as_array().unwrap();
    let text = |row: &Value, key: &str| row[key].as_str().unwrap().to_string();
    rows.iter()
        .map(|row| {
            tokenize_pair(tokenizer, &text(row, "prompt"), &text(row, "chosen"), &text(row, "rejected")).unwrap()
        })
        .collect()
}

fn logps(inputs: &Value) -> SequenceLogps<B> {
    SequenceLogps {
        chosen: column(&inputs["chosen_logps"]),
        rejected: column(&inputs["rejected_logps"]),
        ref_chosen: column(&inputs["ref_chosen_logps"]),
        ref_rejected: column(&inputs["ref_rejected_logps"]),
        chosen_tokens: column(&inputs["chosen_tokens"]),
        rejected_tokens: column(&inputs["rejected_tokens"]),
    }
}

#[test]
fn every_loss_type_and_metric_matches_trl_within_1e_5() {
    let fixture = fixture();
    let beta = fixture["beta"].as_f64().unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let names: Vec<&str> = case["loss_type"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        let weights: Vec<f64> = match case["loss_weights"].as_array() {
            Some(weights) => weights.iter().map(|w| w.as_f64().unwrap()).collect(),
            None => vec![1.0; names.len()],
        };
        let losses = names.iter().zip(weights).map(|(name, w)| (name.parse::<LossType>().unwrap(), w)).collect();
        let dpo = DpoLoss::new(beta, losses, case["label_smoothing"].as_f64().unwrap());
        let inputs = logps(&case["inputs"]);
        let trl = &case["metrics"];
        let loss = f64::from(dpo.loss(&inputs).into_scalar());
        let expected = trl["loss"].as_f64().unwrap();
        assert!((loss - expected).abs() <= 1e-5, "{names:?}: loss {loss} vs TRL {expected}");
        for (name, value) in dpo.metrics(&inputs).named() {
            let expected = trl[name].as_f64().unwrap();
            assert!((value - expected).abs() <= 1e-5, "{names:?}: {name} {value} vs TRL {expected}");
        }
    }
}

#[test]
fn at_step_one_the_reference_is_the_policy_and_the_sigmoid_loss_is_ln_2() {
    let fixture = fixture();
    let inputs = &fixture["cases"][0]["inputs"];
    let mut same = logps(inputs);
    (same.ref_chosen, same.ref_rejected) = (same.chosen.clone(), same.rejected.clone());
    let dpo = DpoLoss::new(0.1, vec![(LossType::Sigmoid, 1.0)], 0.0);
    assert_eq!(dpo.loss(&same).into_scalar(), std::f32::consts::LN_2);
    let metrics = dpo.metrics(&same);
    assert_eq!((metrics.rewards_margins, metrics.rewards_accuracies), (0.0, 0.0));
}

#[test]
fn an_unknown_loss_type_names_the_valid_ones() {
    let err = "kto".parse::<LossType>().unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown DPO loss_type `kto`; expected one of: sigmoid, hinge, ipo, robust, sigmoid_norm, apo_zero, apo_down, sft"
    );
}

#[test]
fn preference_rows_tokenize_as_trl_prepares_them() {
    let fixture = fixture();
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dpo_tokenizer"));
    let tokenizer = TextTokenizer::load(dir).unwrap();
    let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect() };
    let rows = fixture["rows"].as_array().unwrap();
    for (row, trl) in rows.iter().zip(fixture["tokenized"].as_array().unwrap()) {
        let text = |key: &str| row[key].as_str().unwrap();
        let pair = tokenize_pair(&tokenizer, text("prompt"), text("chosen"), text("rejected")).unwrap();
        assert_eq!(pair.prompt, ids(&trl["prompt_ids"]), "{row}");
        assert_eq!((pair.chosen, pair.rejected), (ids(&trl["chosen_ids"]), ids(&trl["rejected_ids"])), "{row}");
    }
    // The row whose prompt ends inside a word: the completion starts where the tokens diverge, before the
    // prompt's end; the row whose chosen already ends with EOS does not get a second one.
    assert_eq!(fixture["tokenized"][2]["prompt_ids"].as_array().unwrap().len(), 1);
    let eos = tokenizer.eos_token_id().unwrap();
    assert_eq!(ids(&fixture["tokenized"][3]["chosen_ids"]).iter().filter(|&&t| t == eos).count(), 1);
}

#[test]
fn llmtrains_model_gives_the_per_sequence_log_probs_trl_computed() {
    let fixture = fixture();
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tokenizer = TextTokenizer::load(&here.join("dpo_tokenizer")).unwrap();
    let pairs = fixture_pairs(&fixture, &tokenizer);
    let pad = tokenizer.pad_token.as_deref().and_then(|t| tokenizer.token_id(t)).unwrap();
    let batch = PairBatch::collate(&pairs, pad, None);
    let trl = &fixture["cases"][0]["inputs"];
    let device = Default::default();
    for (dir, chosen_key, rejected_key) in
        [("dpo_policy", "chosen_logps", "rejected_logps"), ("dpo_reference", "ref_chosen_logps", "ref_rejected_logps")]
    {
        let (model, _) = llmtrain_core::hf::load_model::<B>(&here.join(dir), &device).unwrap();
        let ours: Vec<f32> = sequence_logps(&model, &batch, &device).into_data().into_vec().unwrap();
        let lengths = batch.completion_lengths();
        let n = pairs.len();
        // TRL shuffled the rows: compare the (chosen, rejected, lengths) of each pair, in chosen's order.
        let mut mine: Vec<[f32; 4]> = (0..n).map(|i| [ours[i], ours[n + i], lengths[i], lengths[n + i]]).collect();
        let values = |key: &str| -> Vec<f32> {
            trl[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
        };
        let (c, r, lc, lr) =
            (values(chosen_key), values(rejected_key), values("chosen_tokens"), values("rejected_tokens"));
        let mut theirs: Vec<[f32; 4]> = (0..n).map(|i| [c[i], r[i], lc[i], lr[i]]).collect();
        mine.sort_by(|a, b| a[0].total_cmp(&b[0]));
        theirs.sort_by(|a, b| a[0].total_cmp(&b[0]));
        for (m, t) in mine.iter().zip(&theirs) {
            let diff = m.iter().zip(t).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff <= 1e-5, "{dir}: ours {m:?} vs TRL {t:?}");
        }
    }
}

/// One optimizer step at learning rate 0 of the DPO module under the Trainer, on `rows` in one batch, with the
/// policy `dpo_policy` (with the PEFT adapter in `adapter`, if any) and `reference`; returns the step's log record.
fn one_step(rows: &[TokenizedPair], reference: Reference<B>, adapter: Option<&str>) -> Value {
    use llmtrain_accel::{Accelerator, AcceleratorConfig, FullFinetune};
    use llmtrain_core::model::Compute;
    use llmtrain_lightning::{CausalLm, Datasets, Trainer, TrainerSettings};
    type A = burn::backend::Autodiff<B>;
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tokenizer = TextTokenizer::load(&here.join("dpo_tokenizer")).unwrap();
    let device = Default::default();
    let (mut policy, hf_config) = llmtrain_core::hf::load_model::<A>(&here.join("dpo_policy"), &device).unwrap();
    if let Some(adapter) = adapter {
        llmtrain_fastlora::load_adapter(&mut policy, &here.join(adapter), &device).unwrap();
        llmtrain_fastlora::freeze_base(&mut policy);
    }
    let pad_id = tokenizer.pad_token.as_deref().and_then(|t| tokenizer.token_id(t)).unwrap();
    let files = CausalLm::new(&FullFinetune, Compute::default(), device).with_files(hf_config, tokenizer);
    let loss = DpoLoss::new(0.1, vec![(LossType::Sigmoid, 1.0)], 0.0);
    let mut module = PolicyModule::new(Dpo::new(loss, reference, pad_id, None), files);
    let out = tempfile::tempdir().unwrap();
    let settings = TrainerSettings {
        max_steps: 1,
        schedule: llmtrain_core::train::Schedule::constant(0.0),
        log_every_n_steps: 1,
        enable_progress_bar: false,
        ..TrainerSettings::new(out.path())
    };
    let mut accelerator = Accelerator::<A>::single(AcceleratorConfig::default()).unwrap();
    let mut data = Datasets::new(rows.to_vec(), vec![], rows.len()).unwrap();
    Trainer::new(settings, &mut accelerator).unwrap().fit(&mut module, policy, &mut data, &device).unwrap();
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    serde_json::from_str(metrics.lines().next().unwrap()).unwrap()
}

/// A frozen checkpoint of the fixture as the reference.
fn checkpoint(dir: &str) -> Reference<B> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    Reference::Model(Box::new(llmtrain_core::hf::load_model::<B>(&here.join(dir), &Default::default()).unwrap().0))
}

/// Asserts the figures agree within 1e-5 and prints the largest difference (`--nocapture`).
fn assert_record_matches(what: &str, record: &Value, trl: &Value, names: &[&str]) {
    let mut worst = 0.0f64;
    for name in names {
        let (ours, theirs) = (record[name].as_f64().unwrap(), trl[name].as_f64().unwrap());
        assert!((ours - theirs).abs() <= 1e-5, "{what}: {name}: {ours} vs TRL {theirs}");
        worst = worst.max((ours - theirs).abs());
    }
    eprintln!("parity {what}: {} figures, largest |llmtrain - TRL| {worst:.1e}", names.len());
}

#[test]
fn the_dpo_module_logs_trls_loss_and_metrics_at_step_one() {
    let fixture = fixture();
    let trl = &fixture["cases"][0]["metrics"];
    assert_eq!(fixture["cases"][0]["loss_type"], serde_json::json!(["sigmoid"]));
    let tokenizer =
        TextTokenizer::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dpo_tokenizer"))
            .unwrap();
    let rows = fixture_pairs(&fixture, &tokenizer);
    let record = one_step(&rows, checkpoint("dpo_reference"), None);
    let names: Vec<&str> = std::iter::once("loss").chain(DpoMetrics::NAMES).collect();
    assert_record_matches("dpo module", &record, trl, &names);
    // The reference a copy of the policy: ln 2 exactly as TRL's first step, and no margin.
    let record = one_step(&rows, checkpoint("dpo_policy"), None);
    assert!((record["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{record}");
    assert_eq!(record["rewards/margins"].as_f64(), Some(0.0));
}

#[test]
fn with_a_lora_adapter_the_reference_is_the_policy_without_it_as_in_trl_with_a_peft_config() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(here.join("dpo_lora.json")).unwrap()).unwrap();
    let tokenizer = TextTokenizer::load(&here.join("dpo_tokenizer")).unwrap();
    let rows = fixture_pairs(&fixture, &tokenizer);
    let record = one_step(&rows, Reference::PolicyWithoutAdapters, Some("dpo_lora_adapter"));
    let trl = &fixture["log"];
    assert!((trl["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() > 1e-3, "the adapter matters");
    let mut names: Vec<&str> = std::iter::once("loss").chain(DpoMetrics::NAMES).collect();
    names.extend(["entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy"]);
    assert_record_matches("dpo lora (adapter disabled)", &record, trl, &names);
}
