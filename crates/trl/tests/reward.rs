//! Reward models against transformers and TRL 1.16: `fixtures/reward_model/` is a `LlamaForSequenceClassification`
//! saved by transformers, and `fixtures/reward.json` holds its logits for padded batches, RewardTrainer's ids for
//! four preference rows, the rewards it computed and its first log record for each case (made by
//! `scripts/make_reward_chat_fixtures.py`).

use burn::tensor::Tensor;
use llmtrain_core::data::Row;
use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::hf::{self, Head, HfConfig, SaveOptions};
use llmtrain_core::model::SequenceClassifier;
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_trl::reward::{RewardLoss, reward_pair_from_row};
use serde_json::Value;

fn here() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(here().join("reward.json")).unwrap()).unwrap()
}

fn load(dir: &std::path::Path) -> SequenceClassifier<B> {
    let (model, score, _) = hf::load_sequence_classifier::<B>(dir, &Default::default()).unwrap();
    SequenceClassifier { model, score: burn::module::Param::from_tensor(score) }
}

/// The classifier's scores of a fixture batch, with transformers' logits.
fn scores(net: &SequenceClassifier<B>, batch: &Value) -> (Vec<f32>, Vec<f32>) {
    let rows = batch["input_ids"].as_array().unwrap();
    let flat = |key: &str| -> Vec<u64> {
        batch[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
            .collect()
    };
    let ids: Vec<u32> = flat("input_ids").iter().map(|&t| t as u32).collect();
    let ours = net.scores(&ids, rows.len(), 0, &Default::default()).into_data().to_vec::<f32>().unwrap();
    let theirs = batch["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    (ours, theirs)
}

fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (a, b) in ours.iter().zip(theirs) {
        assert!((a - b).abs() <= 1e-5, "{what}: ours {ours:?} vs transformers {theirs:?}");
    }
}

#[test]
fn a_sequence_classifier_scores_as_transformers_and_round_trips_through_its_files() {
    let fixture = fixture();
    let net = load(&here().join("reward_model"));
    for key in ["forward", "forward_pad_inside"] {
        let (ours, theirs) = scores(&net, &fixture[key]);
        assert_close(&ours, &theirs, key);
    }
    // Written back, it is the same classifier in transformers' layout.
    let out = tempfile::tempdir().unwrap();
    let config = HfConfig::load(&here().join("reward_model")).unwrap();
    assert_eq!(config.head, Head::SequenceClassification { num_labels: 1 });
    hf::save_sequence_classifier(&net.model, net.score.val(), &config, out.path(), &SaveOptions::default()).unwrap();
    let (ours, theirs) = scores(&load(out.path()), &fixture["forward"]);
    assert_close(&ours, &theirs, "reloaded");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(written["architectures"], serde_json::json!(["LlamaForSequenceClassification"]));
    assert_eq!(written["id2label"], serde_json::json!({"0": "LABEL_0"}));
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let original = std::fs::read(here().join("reward_model/model.safetensors")).unwrap();
    let original = safetensors::SafeTensors::deserialize(&original).unwrap();
    let mut names: Vec<String> = tensors.names().into_iter().map(String::from).collect();
    let mut expected: Vec<String> = original.names().into_iter().map(String::from).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "the same tensor names as transformers wrote: no lm_head, a [1, hidden] score");
    assert_eq!(tensors.tensor("score.weight").unwrap().shape(), [1, 16]);
    // A causal-LM loader refuses it in one line, and a classifier with two labels is refused as a reward model.
    let err = hf::load_model::<B>(&here().join("reward_model"), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("LlamaForSequenceClassification (a reward model) has no language-model head"), "{err}");
    let two = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(here().join("reward_model").join(file), two.path().join(file)).unwrap();
    }
    let text = std::fs::read_to_string(two.path().join("config.json")).unwrap();
    let text = text.replace("\"LABEL_0\"\n  },", "\"LABEL_0\",\n    \"1\": \"LABEL_1\"\n  },");
    std::fs::write(two.path().join("config.json"), text).unwrap();
    let err = hf::load_sequence_classifier::<B>(two.path(), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("key `id2label`: 2 labels, but a reward model has one score"), "{err}");
}

#[test]
fn rows_tokenize_and_the_loss_and_metrics_match_reward_trainer() {
    let fixture = fixture();
    let tokenizer = TextTokenizer::load(&here().join("reward_model")).unwrap();
    for (row, theirs) in fixture["rows"].as_array().unwrap().iter().zip(fixture["tokenized"].as_array().unwrap()) {
        let pair = reward_pair_from_row(&tokenizer, &Row::parse(row).unwrap(), 1024).unwrap().unwrap();
        let ids = |key: &str| -> Vec<u32> {
            theirs[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
        };
        assert_eq!((pair.chosen, pair.rejected), (ids("chosen_ids"), ids("rejected_ids")));
    }
    let column = |v: &Value| -> Tensor<B, 1> {
        let values: Vec<f32> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        Tensor::from_data(values.as_slice(), &Default::default())
    };
    for case in fixture["cases"].as_array().unwrap() {
        let loss = RewardLoss { center_rewards_coefficient: case["center_rewards_coefficient"].as_f64() };
        let (chosen, rejected) = (column(&case["rewards_chosen"]), column(&case["rewards_rejected"]));
        let margins = match case["margin"].as_array() {
            Some(_) => column(&case["margin"]),
            None => Tensor::zeros([4], &Default::default()),
        };
        let log = &case["log"];
        let ours = f64::from(loss.loss(chosen.clone(), rejected.clone(), margins).into_scalar());
        assert!(
            (ours - log["loss"].as_f64().unwrap()).abs() <= 1e-5,
            "{}: loss {ours} vs {}",
            case["name"],
            log["loss"]
        );
        for (name, ours) in loss.metrics(chosen, rejected).named() {
            let theirs = log[name].as_f64().unwrap();
            assert!((ours - theirs).abs() <= 1e-5, "{}: {name}: {ours} vs TRL {theirs}", case["name"]);
        }
    }
}
