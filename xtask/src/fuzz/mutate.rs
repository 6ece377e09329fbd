//! The mutation engine: a seeded RNG and the edits that turn a valid file into a near-miss.
//!
//! Hand-written because cargo-fuzz (libFuzzer) needs a nightly compiler and its coverage instrumentation; this
//! runs on the pinned stable toolchain. There is no coverage feedback, so the edits are format-aware (numbers
//! swapped for extreme values, keys swapped for other keys of the format, lines duplicated or dropped) to stay
//! close enough to valid input to get past the first parse.

/// SplitMix64: tiny, seedable, and the same on every platform, so `--seed` reproduces a run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Numbers that sit on the edges parsers get wrong: zero, negatives, overflow of u32/i64/u64/usize, huge and tiny
/// floats, and the non-finite spellings TOML and lenient JSON readers accept.
pub const EXTREME_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "-0.0",
    "0.5",
    "1e308",
    "-1e308",
    "1e-308",
    "5e-324",
    "1e400",
    "255",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "NaN",
    "nan",
    "inf",
    "-inf",
];

/// Bytes that change the structure of text formats.
const STRUCTURAL: &[u8] = b"\"'{}[],:=.\n\\#-+0 \x00\xff";

/// How an input is laid out, which decides the edits that make sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// TOML, JSON, JSONL: token- and line-level edits as well as byte edits.
    Text,
    /// Parquet: byte edits and integers overwritten in place.
    Binary,
    /// Safetensors: an 8-byte little-endian header length, a JSON header, then the tensor bytes.
    Safetensors,
}

/// Makes a new input from `base` (one of the corpus) with 1 to 8 stacked edits; `other` is a second corpus
/// entry to splice with; `dict` holds tokens of the format (keys, keywords).
pub fn mutate(rng: &mut Rng, layout: Layout, base: &[u8], other: &[u8], dict: &[&str], max_len: usize) -> Vec<u8> {
    let mut data = base.to_vec();
    match layout {
        Layout::Safetensors if data.len() >= 8 && rng.chance(80) => mutate_safetensors(rng, &mut data, dict),
        Layout::Binary | Layout::Safetensors => {
            for _ in 0..edits(rng) {
                binary_edit(rng, &mut data, other);
            }
        }
        Layout::Text => {
            for _ in 0..edits(rng) {
                text_edit(rng, &mut data, other, dict);
            }
        }
    }
    data.truncate(max_len);
    data
}

/// One edit half the time, up to 8: most inputs stay one step from a valid file, where parsers go deepest.
fn edits(rng: &mut Rng) -> usize {
    match rng.below(8) {
        0..=3 => 1,
        4 | 5 => 2,
        6 => 4,
        _ => 8,
    }
}

fn text_edit(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], dict: &[&str]) {
    match rng.below(12) {
        0 | 1 => replace_span(rng, data, number_spans(data), |rng| rng.pick(EXTREME_NUMBERS).as_bytes().to_vec()),
        2 | 3 => replace_span(rng, data, word_spans(data), |rng| pick_dict(rng, dict)),
        4 => {
            let token =
                if rng.chance(50) { pick_dict(rng, dict) } else { rng.pick(EXTREME_NUMBERS).as_bytes().to_vec() };
            let at = rng.below(data.len() + 1);
            data.splice(at..at, token);
        }
        5 => line_edit(rng, data),
        6 => {
            // A line of another input (a key of another section, a row of another format).
            let lines: Vec<&[u8]> = other.split(|&b| b == b'\n').collect();
            let line = *rng.pick(&lines);
            let at = data.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1).collect::<Vec<_>>();
            let at = if at.is_empty() { 0 } else { *rng.pick(&at) };
            data.splice(at..at, line.iter().copied().chain([b'\n']));
        }
        _ => binary_edit(rng, data, other),
    }
}

fn pick_dict(rng: &mut Rng, dict: &[&str]) -> Vec<u8> {
    if dict.is_empty() { b"x".to_vec() } else { rng.pick(dict).as_bytes().to_vec() }
}

/// Byte-level edits: flips, structural bytes, inserts, deletes, duplicated ranges, truncation, splices.
fn binary_edit(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = *rng.pick(STRUCTURAL);
        }
        2 => {
            let at = rng.below(len + 1);
            let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            data.drain(at..end);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(64)).min(len);
            let chunk = data[at..end].to_vec();
            let to = rng.below(len + 1);
            data.splice(to..to, chunk);
        }
        5 => data.truncate(rng.below(len + 1)),
        6 => {
            // This input's head with the other's tail.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        7 if len >= 8 => overwrite_integer(rng, data),
        _ if len > 0 => {
            let at = rng.below(len);
            data[at] = rng.next_u64() as u8;
        }
        _ => data.push(rng.next_u64() as u8),
    }
}

/// Writes an edge-case integer (little-endian, 1 to 8 bytes) over the bytes at a random offset: lengths,
/// counts and offsets in binary formats.
fn overwrite_integer(rng: &mut Rng, data: &mut [u8]) {
    let width = *rng.pick(&[1usize, 2, 4, 8]);
    if data.len() < width {
        return;
    }
    let value: u64 = match rng.below(6) {
        0 => 0,
        1 => u64::MAX,
        2 => 1 << (rng.below(64)),
        3 => (1 << (rng.below(64))) - 1,
        4 => data.len() as u64 + rng.below(3) as u64,
        _ => rng.next_u64(),
    };
    let at = rng.below(data.len() - width + 1);
    data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

/// Duplicates, drops or swaps whole lines (TOML keys, JSONL rows).
fn line_edit(rng: &mut Rng, data: &mut Vec<u8>) {
    let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    let (a, b) = (rng.below(n), rng.below(n));
    match rng.below(3) {
        0 => {
            let line = lines[a].clone();
            lines.insert(b, line);
        }
        1 if n > 1 => {
            lines.remove(a);
        }
        _ => lines.swap(a, b),
    }
    *data = lines.join(&b'\n');
}

/// Replaces one of `spans` (byte ranges) with what `make` returns; with no span, edits a random byte instead.
fn replace_span(rng: &mut Rng, data: &mut Vec<u8>, spans: Vec<(usize, usize)>, make: impl FnOnce(&mut Rng) -> Vec<u8>) {
    if spans.is_empty() {
        return binary_edit(rng, data, &[]);
    }
    let (start, end) = *rng.pick(&spans);
    let token = make(rng);
    data.splice(start..end, token);
}

/// Ranges of number-like tokens: a digit (or a sign before one) and what follows of digits, `.`, `e`, `+`, `-`.
fn number_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let starts = data[i].is_ascii_digit()
            || (data[i] == b'-' && data.get(i + 1).is_some_and(u8::is_ascii_digit) && !word_byte(prev(data, i)));
        if starts && !word_byte(prev(data, i)) {
            let start = i;
            i += 1;
            while i < data.len() && matches!(data[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-' | b'_') {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// Ranges of identifiers (keys, enum values, words in strings).
fn word_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if (data[i].is_ascii_alphabetic() || data[i] == b'_') && !word_byte(prev(data, i)) {
            let start = i;
            while i < data.len() && word_byte(data[i]) {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn prev(data: &[u8], i: usize) -> u8 {
    if i == 0 { b' ' } else { data[i - 1] }
}

/// Edits a safetensors file where its parser looks: mostly the JSON header (with the length prefix kept
/// consistent, so the header is parsed), sometimes the prefix itself or the tensor bytes.
fn mutate_safetensors(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&str]) {
    let declared = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
    let header_end = usize::try_from(declared).ok().and_then(|n| n.checked_add(8)).filter(|&end| end <= data.len());
    let Some(header_end) = header_end else {
        return binary_edit(rng, data, &[]);
    };
    match rng.below(10) {
        0 => {
            let lengths = [0, 1, 2, u64::MAX, 1 << 63, 100_000_001, declared + 1, declared.saturating_sub(1)];
            data[..8].copy_from_slice(&rng.pick(&lengths).to_le_bytes());
        }
        1 => {
            let mut tensors = data.split_off(header_end);
            binary_edit(rng, &mut tensors, &[]);
            data.extend_from_slice(&tensors);
        }
        _ => {
            let mut header = data[8..header_end].to_vec();
            for _ in 0..edits(rng) {
                text_edit(rng, &mut header, &[], dict);
            }
            let tensors = data[header_end..].to_vec();
            data.clear();
            data.extend_from_slice(&(header.len() as u64).to_le_bytes());
            data.extend_from_slice(&header);
            data.extend_from_slice(&tensors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let base = br#"{"a": 12, "b": [1.5, -3], "name": "x"}"#;
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..50).map(|_| mutate(&mut rng, Layout::Text, base, b"{}", &["key"], 4096)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn numbers_and_words_are_found() {
        let text = b"a = -12.5e3\nb_2 = [1, 2]";
        let numbers: Vec<&[u8]> = number_spans(text).iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(numbers, [&b"-12.5e3"[..], b"1", b"2"]);
        let words: Vec<&[u8]> = word_spans(text).iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(words, [&b"a"[..], b"b_2"]);
    }

    #[test]
    fn safetensors_edits_keep_the_length_prefix_consistent_most_of_the_time() {
        let header = br#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&[0; 4]);
        let mut rng = Rng::new(1);
        let consistent = (0..200)
            .filter(|_| {
                let out = mutate(&mut rng, Layout::Safetensors, &file, &file, &["shape"], 1 << 16);
                let declared = out.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                declared.and_then(|n| usize::try_from(n).ok()?.checked_add(8)).is_some_and(|end| end <= out.len())
            })
            .count();
        assert!(consistent > 100, "{consistent}");
    }
}
