//! Chat templates render exactly as transformers' `apply_chat_template` (fixture strings made by
//! scripts/make_fixtures.py), including templates that raise.

use llmtrain_core::chat::{ChatTemplate, Message};
use serde_json::Value;

#[test]
fn llama3_chatml_and_mistral_render_like_transformers() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = std::collections::BTreeMap::new();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let template = ChatTemplate::new(fixture["templates"][name].as_str().unwrap()).unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let result = template.render(
            &messages,
            case["add_generation_prompt"].as_bool().unwrap(),
            case["bos_token"].as_str(),
            case["eos_token"].as_str(),
        );
        match (case["rendered"].as_str(), case["error"].as_str()) {
            (Some(want), _) => assert_eq!(result.unwrap(), want, "{name}: {messages:?}"),
            (None, Some(err)) => {
                let got = result.unwrap_err().to_string();
                assert_eq!(got, format!("chat template: {err}"), "{name}");
            }
            _ => unreachable!(),
        }
        *checked.entry(name.to_string()).or_insert(0) += 1;
    }
    assert_eq!(checked.len(), 3, "{checked:?}");
}
