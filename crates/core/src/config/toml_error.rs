//! Parse errors as one line naming the file, line, column and the closest valid key or section.

use std::path::Path;

use crate::error::CoreError;

/// One line: `file:line:col: message`, with the closest valid key for an unknown one.
pub(super) fn describe_toml_error(err: &toml::de::Error, text: &str, path: &Path) -> CoreError {
    let message = err.message().trim().replace('\n', " ");
    let (line, column) = match err.span() {
        Some(span) => line_and_column(text, span.start),
        None => (0, 0),
    };
    if let Some((unknown, closest)) = unknown_field(&message) {
        // The table the key sits in: the last `[section]` header above it.
        let section = text
            .lines()
            .take(line)
            .filter_map(|l| l.trim().strip_prefix('[')?.split(']').next().map(str::to_string))
            .last()
            .map(|s| format!(" in [{s}]"))
            .unwrap_or_default();
        return CoreError::Invalid(format!(
            "{}:{line}:{column}: unknown key `{unknown}`{section}; did you mean `{closest}`?",
            path.display()
        ));
    }
    CoreError::Invalid(format!("{}:{line}:{column}: {message}", path.display()))
}

/// `file:line:1: unknown section [name]; did you mean [training]?` for a near miss of a `known` section, else
/// the list of sections this build knows.
pub(super) fn unknown_section(text: &str, path: &Path, unknown: &str, known: &[&str]) -> CoreError {
    // The header (`[name]`, `[name.sub]`, a comment after it) or a dotted key (`name.key = ...`) that opens it.
    let line = text
        .lines()
        .position(|l| {
            let l = l.split('#').next().unwrap_or_default().trim();
            let head = l.strip_prefix('[').map(|h| h.trim_start_matches('[')).unwrap_or(l);
            let name = head.split(['.', ']', '=', ' ']).next().unwrap_or_default().trim().trim_matches('"');
            name == unknown
        })
        .map_or(0, |i| i + 1);
    let closest =
        known.iter().min_by_key(|name| strsim::damerau_levenshtein(unknown, name)).copied().unwrap_or_default();
    let suggestion = if crate::paths::is_near_miss(unknown, closest, strsim::damerau_levenshtein(unknown, closest)) {
        format!("did you mean [{closest}]?")
    } else {
        let all: Vec<String> = known.iter().map(|name| format!("[{name}]")).collect();
        format!("this build knows {}", all.join(", "))
    };
    CoreError::Invalid(format!("{}:{line}:1: unknown section [{unknown}]; {suggestion}", path.display()))
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// From serde's "unknown field `x`, expected one of `a`, `b`": the unknown key and the closest expected one.
fn unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let closest = expected
        .iter()
        .min_by(|a, b| strsim::damerau_levenshtein(unknown, a).cmp(&strsim::damerau_levenshtein(unknown, b)))?;
    Some((unknown.to_string(), closest.to_string()))
}
