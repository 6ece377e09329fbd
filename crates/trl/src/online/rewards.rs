//! What scores a completion: built-in reward functions chosen by name (the verifiable kind GRPO is used with) and
//! a reward model, combined with `reward_weights` as TRL combines them (a weighted sum).

use std::path::PathBuf;

use regex::Regex;
use serde_json::{Map, Value};

/// A built-in reward function.
#[derive(Debug, Clone)]
pub enum RewardFunction {
    /// `exact_match`: 1 when the completion's text, trimmed, equals the row's `column` (trimmed; a number or a
    /// string), else 0.
    ExactMatch { column: String },
    /// `format`: 1 when the whole completion's text matches the pattern, else 0.
    Format { pattern: Regex },
    /// `soft_overlong_punishment` (DAPO, TRL's `get_soft_overlong_punishment`): 0 up to `max - cache` tokens,
    /// then falling linearly to -1 at `max`, and -1 beyond.
    SoftOverlong { max: usize, cache: usize },
}

impl PartialEq for RewardFunction {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::ExactMatch { column: a }, Self::ExactMatch { column: b }) => a == b,
            (Self::Format { pattern: a }, Self::Format { pattern: b }) => a.as_str() == b.as_str(),
            (Self::SoftOverlong { max: a, cache: c }, Self::SoftOverlong { max: b, cache: d }) => a == b && c == d,
            _ => false,
        }
    }
}

impl RewardFunction {
    /// The names `reward_funcs` accepts.
    pub const NAMES: [&'static str; 3] = ["exact_match", "format", "soft_overlong_punishment"];

    /// The function `name` with the section's settings for it.
    pub fn from_name(
        name: &str,
        answer_column: &str,
        format_pattern: Option<&str>,
        max_completion_length: usize,
        soft_punish_cache: Option<usize>,
    ) -> Result<Self, String> {
        match name {
            "exact_match" => Ok(Self::ExactMatch { column: answer_column.to_string() }),
            "format" => {
                let pattern = format_pattern.ok_or("`format` needs format_pattern, the regular expression to match")?;
                let pattern = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                    // The regex crate's message draws the pattern over lines; its last line says what is wrong.
                    let message = e.to_string();
                    let cause = message.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default();
                    let cause = cause.strip_prefix("error: ").unwrap_or(cause);
                    format!(
                        "format_pattern `{}` is not a regular expression: {cause}",
                        llmtrain_core::error::one_line(pattern)
                    )
                })?;
                Ok(Self::Format { pattern })
            }
            "soft_overlong_punishment" => {
                let cache = soft_punish_cache.unwrap_or((max_completion_length / 4).max(1));
                if cache == 0 || cache > max_completion_length {
                    return Err(format!("soft_punish_cache must be in 1..={max_completion_length}, got {cache}"));
                }
                Ok(Self::SoftOverlong { max: max_completion_length, cache })
            }
            other => Err(format!("unknown reward function `{other}`; expected one of: {}", Self::NAMES.join(", "))),
        }
    }

    /// The name it is logged under (`rewards/NAME/mean`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ExactMatch { .. } => "exact_match",
            Self::Format { .. } => "format",
            Self::SoftOverlong { .. } => "soft_overlong_punishment",
        }
    }

    /// The reward of one completion: its text, its token count and its row's other columns.
    pub fn score(&self, text: &str, tokens: usize, columns: &Map<String, Value>) -> f64 {
        match self {
            Self::ExactMatch { column } => {
                let expected = match columns.get(column) {
                    Some(Value::String(s)) => s.trim().to_string(),
                    Some(Value::Null) | None => return 0.0,
                    Some(other) => other.to_string(),
                };
                f64::from(u8::from(text.trim() == expected))
            }
            Self::Format { pattern } => f64::from(u8::from(pattern.is_match(text))),
            Self::SoftOverlong { max, cache } => {
                let start = max - cache;
                if tokens <= start {
                    0.0
                } else if tokens <= *max {
                    (start as f64 - tokens as f64) / *cache as f64
                } else {
                    -1.0
                }
            }
        }
    }
}

/// The rewards of a run: the functions, the reward model, and one weight for each (functions first).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    pub functions: Vec<RewardFunction>,
    pub reward_model: Option<PathBuf>,
    pub weights: Vec<f64>,
}

impl RewardSpec {
    /// The names of the rewards in weight order (`reward_model` for the model).
    pub fn names(&self) -> Vec<&'static str> {
        let model = self.reward_model.is_some().then_some("reward_model");
        self.functions.iter().map(RewardFunction::name).chain(model).collect()
    }

    /// The weighted sum of one completion's rewards (in [`names`](Self::names)' order).
    pub fn combine(&self, rewards: &[f64]) -> f64 {
        rewards.iter().zip(&self.weights).map(|(r, w)| r * w).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_in_rewards_score_as_documented() {
        let columns: Map<String, Value> = json!({"answer": "7", "n": 12}).as_object().unwrap().clone();
        let exact = RewardFunction::from_name("exact_match", "answer", None, 8, None).unwrap();
        assert_eq!(exact.score(" 7\n", 2, &columns), 1.0);
        assert_eq!(exact.score("17", 2, &columns), 0.0);
        let number = RewardFunction::from_name("exact_match", "n", None, 8, None).unwrap();
        assert_eq!(number.score("12", 2, &columns), 1.0);
        let format = RewardFunction::from_name("format", "answer", Some("[0-9]+"), 8, None).unwrap();
        assert_eq!((format.score("42", 1, &columns), format.score("42 apples", 1, &columns)), (1.0, 0.0));
        assert!(RewardFunction::from_name("format", "answer", None, 8, None).unwrap_err().contains("format_pattern"));
        // max 8, cache 4: 0 up to 4 tokens, then -(n - 4) / 4, -1 beyond 8.
        let long = RewardFunction::from_name("soft_overlong_punishment", "answer", None, 8, Some(4)).unwrap();
        let scores: Vec<f64> = [3, 4, 5, 8, 9].iter().map(|&n| long.score("", n, &columns)).collect();
        assert_eq!(scores, vec![0.0, 0.0, -0.25, -1.0, -1.0]);
        let spec = RewardSpec { functions: vec![exact, format], reward_model: None, weights: vec![1.0, 0.5] };
        assert_eq!(spec.combine(&[1.0, 1.0]), 1.5);
        assert_eq!(spec.names(), vec!["exact_match", "format"]);
    }

    #[test]
    fn an_invalid_format_pattern_is_a_one_line_error() {
        // The regex crate's message spans three lines (the bug `cargo xtask fuzz` found in adapter configs).
        let err = RewardFunction::from_name("format", "answer", Some("a\\"), 8, None).unwrap_err();
        assert_eq!(err, "format_pattern `a\\` is not a regular expression: unclosed group");
    }
}
