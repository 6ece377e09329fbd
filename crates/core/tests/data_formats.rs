//! TRL's row formats read from JSONL and from Parquet (written here with the parquet crate, in the layout
//! `datasets`/pyarrow writes), implicit prompts, and one-line errors naming file, line or row, and field.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llmtrain_core::chat::Message;
use llmtrain_core::data::{Content, DataLoader, DataOptions, LossOn, Row, RowReader, Split};
use llmtrain_core::tokenizer::{BpeTrainingOptions, TextTokenizer, train_bpe};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::{Value, json};

/// A Parquet column: strings (None = null), booleans, or message lists as pyarrow writes
/// `list<struct<content, role>>`.
enum Col {
    Str(&'static str, Vec<Option<&'static str>>),
    Bool(&'static str, Vec<bool>),
    Chat(&'static str, Vec<Vec<(&'static str, &'static str)>>),
}

impl Col {
    fn name(&self) -> &'static str {
        match self {
            Col::Str(n, _) | Col::Bool(n, _) | Col::Chat(n, _) => n,
        }
    }

    fn json(&self, row: usize) -> Value {
        match self {
            Col::Str(_, v) => v[row].map_or(Value::Null, |s| json!(s)),
            Col::Bool(_, v) => json!(v[row]),
            Col::Chat(_, v) => v[row].iter().map(|(r, c)| json!({"role": r, "content": c})).collect(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Col::Str(_, v) => v.len(),
            Col::Bool(_, v) => v.len(),
            Col::Chat(_, v) => v.len(),
        }
    }
}

/// Writes `cols` as Parquet (snappy, two row groups so reading crosses a group) and as the equivalent JSONL.
fn write_both(dir: &Path, name: &str, cols: &[Col]) -> (PathBuf, PathBuf) {
    let rows = cols[0].len();
    let jsonl = dir.join(format!("{name}.jsonl"));
    let lines: Vec<String> = (0..rows)
        .map(|r| Value::Object(cols.iter().map(|c| (c.name().to_string(), c.json(r))).collect()).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();

    let fields: String = cols
        .iter()
        .map(|c| match c {
            Col::Str(n, _) => format!("OPTIONAL BYTE_ARRAY {n} (UTF8);"),
            Col::Bool(n, _) => format!("REQUIRED BOOLEAN {n};"),
            Col::Chat(n, _) => format!(
                "OPTIONAL group {n} (LIST) {{ REPEATED group list {{ OPTIONAL group element {{ \
                 OPTIONAL BYTE_ARRAY content (UTF8); OPTIONAL BYTE_ARRAY role (UTF8); }} }} }}"
            ),
        })
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {fields} }}")).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let parquet = dir.join(format!("{name}.parquet"));
    let mut writer = SerializedFileWriter::new(std::fs::File::create(&parquet).unwrap(), schema, props).unwrap();
    let half = rows.div_ceil(2);
    for range in [0..half, half..rows] {
        let mut group = writer.next_row_group().unwrap();
        for col in cols {
            match col {
                Col::Str(_, v) => {
                    let v = &v[range.clone()];
                    let values: Vec<ByteArray> = v.iter().flatten().map(|s| ByteArray::from(*s)).collect();
                    let defs: Vec<i16> = v.iter().map(|s| i16::from(s.is_some())).collect();
                    let mut c = group.next_column().unwrap().unwrap();
                    c.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).unwrap();
                    c.close().unwrap();
                }
                Col::Bool(_, v) => {
                    let mut c = group.next_column().unwrap().unwrap();
                    c.typed::<BoolType>().write_batch(&v[range.clone()], None, None).unwrap();
                    c.close().unwrap();
                }
                Col::Chat(_, v) => {
                    // Leaves in schema order: content, then role. Every message present: definition level 4.
                    for leaf in 0..2 {
                        let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
                        for messages in &v[range.clone()] {
                            if messages.is_empty() {
                                defs.push(1);
                                reps.push(0);
                            }
                            for (i, (role, content)) in messages.iter().enumerate() {
                                values.push(ByteArray::from(if leaf == 0 { *content } else { *role }));
                                defs.push(4);
                                reps.push(i16::from(i > 0));
                            }
                        }
                        let mut c = group.next_column().unwrap().unwrap();
                        c.typed::<ByteArrayType>().write_batch(&values, Some(&defs), Some(&reps)).unwrap();
                        c.close().unwrap();
                    }
                }
            }
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
    (jsonl, parquet)
}

fn read_rows(path: &Path) -> Vec<Row> {
    RowReader::open(path).unwrap().map(|r| r.unwrap().1).collect()
}

fn text(s: &str) -> Content {
    Content::Text(s.into())
}

fn chat(turns: &[(&str, &str)]) -> Content {
    Content::Chat(turns.iter().map(|(r, c)| Message::new(r, c)).collect())
}

const USER: (&str, &str) = ("user", "what is two plus two?");
const ASSISTANT: (&str, &str) = ("assistant", "four.");

/// Each case: its columns (an extra `source` column everywhere, ignored) and the rows expected from both files.
fn cases() -> Vec<(&'static str, Vec<Col>, Vec<Row>)> {
    let source = || Col::Str("source", vec![Some("web"), None, Some("books")]);
    vec![
        (
            "text",
            vec![Col::Str("text", vec![Some("the cat"), Some("sat on"), Some("the mat")]), source()],
            ["the cat", "sat on", "the mat"].iter().map(|t| Row::Text { text: t.to_string() }).collect(),
        ),
        (
            "messages",
            vec![Col::Chat("messages", vec![vec![USER, ASSISTANT], vec![USER], vec![]]), source()],
            vec![
                Row::Messages { messages: vec![Message::new(USER.0, USER.1), Message::new(ASSISTANT.0, ASSISTANT.1)] },
                Row::Messages { messages: vec![Message::new(USER.0, USER.1)] },
                Row::Messages { messages: vec![] },
            ],
        ),
        (
            "prompt_completion",
            vec![
                Col::Str("prompt", vec![Some("a"), Some("b"), Some("c")]),
                Col::Str("completion", vec![Some("1"), Some("2"), Some("3")]),
                source(),
            ],
            [("a", "1"), ("b", "2"), ("c", "3")]
                .iter()
                .map(|(p, c)| Row::PromptCompletion { prompt: text(p), completion: text(c) })
                .collect(),
        ),
        (
            "conversational_prompt_completion",
            vec![Col::Chat("prompt", vec![vec![USER]; 3]), Col::Chat("completion", vec![vec![ASSISTANT]; 3]), source()],
            vec![Row::PromptCompletion { prompt: chat(&[USER]), completion: chat(&[ASSISTANT]) }; 3],
        ),
        (
            "preference",
            vec![
                Col::Str("prompt", vec![Some("The sky is"); 3]),
                Col::Str("chosen", vec![Some(" blue."); 3]),
                Col::Str("rejected", vec![Some(" green."); 3]),
                source(),
            ],
            vec![
                Row::Preference {
                    prompt: text("The sky is"),
                    chosen: text(" blue."),
                    rejected: text(" green."),
                    margin: None
                };
                3
            ],
        ),
        (
            "implicit_preference",
            vec![
                Col::Chat("chosen", vec![vec![USER, ASSISTANT]; 3]),
                Col::Chat("rejected", vec![vec![USER, ("assistant", "five.")]; 3]),
                source(),
            ],
            vec![
                Row::Preference {
                    prompt: chat(&[USER]),
                    chosen: chat(&[ASSISTANT]),
                    rejected: chat(&[("assistant", "five.")]),
                    margin: None,
                };
                3
            ],
        ),
        (
            "prompt_only",
            vec![Col::Chat("prompt", vec![vec![USER]; 3]), source()],
            ["web", "", "books"]
                .iter()
                .map(|source| {
                    let extra = (!source.is_empty()).then(|| ("source".to_string(), serde_json::json!(source)));
                    Row::PromptOnly { prompt: chat(&[USER]), extra: extra.into_iter().collect() }
                })
                .collect(),
        ),
        (
            "unpaired_preference",
            vec![
                Col::Str("prompt", vec![Some("q"); 3]),
                Col::Str("completion", vec![Some("a"); 3]),
                Col::Bool("label", vec![true, false, true]),
                source(),
            ],
            [true, false, true]
                .iter()
                .map(|&label| Row::UnpairedPreference { prompt: text("q"), completion: text("a"), label })
                .collect(),
        ),
    ]
}

#[test]
fn every_format_reads_the_same_from_jsonl_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    for (name, cols, expected) in cases() {
        let (jsonl, parquet) = write_both(dir.path(), name, &cols);
        assert_eq!(read_rows(&jsonl), expected, "{name} from JSONL");
        assert_eq!(read_rows(&parquet), expected, "{name} from Parquet");
    }
}

#[test]
fn implicit_string_prompt_is_the_longest_common_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    std::fs::write(&path, "{\"chosen\": \"The sky is blue.\", \"rejected\": \"The sky is green.\"}\n").unwrap();
    let expected =
        Row::Preference { prompt: text("The sky is"), chosen: text(" blue."), rejected: text(" green."), margin: None };
    assert_eq!(read_rows(&path), vec![expected]);
}

fn tokenizer(dir: &Path) -> TextTokenizer {
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "the cat sat on the mat. what is two plus two? four.\n".repeat(20)).unwrap();
    train_bpe(&[corpus], &BpeTrainingOptions { vocab_size: 300, min_frequency: 2 }).unwrap()
}

fn options(files: Vec<PathBuf>) -> DataOptions {
    DataOptions {
        files,
        seq_len: 32,
        batch_size: 1,
        packing: false,
        shuffle: false,
        seed: 0,
        loss_on: LossOn::All,
        skip_malformed: false,
        eval_fraction: 0.0,
        rank: 0,
        world_size: 1,
    }
}

fn first_error(tok: &TextTokenizer, path: &Path) -> String {
    match DataLoader::new(&options(vec![path.to_path_buf()]), tok, Split::Train) {
        Err(e) => e.to_string(),
        Ok(mut loader) => loop {
            match loader.next_batch() {
                Err(e) => break e.to_string(),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error"),
            }
        },
    }
}

#[test]
fn malformed_rows_are_one_line_errors_naming_file_line_or_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let bad_lines = [
        ("{\"messages\": \"hi\"}", "field `messages`: expected a list of {role, content} objects, found a string"),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}",
            "field `messages[0]`: expected an object with string `role` and `content`, found an object with `role` a \
             string and `content` a number",
        ),
        ("{\"text\": [\"a\"]}", "field `text`: expected a string, found a list"),
        (
            "{\"prompt\": \"a\", \"completion\": 7}",
            "field `completion`: expected a string or a list of messages, found a number",
        ),
        ("{\"text\": \"ok\"", "invalid JSON at column 13: EOF while parsing an object"),
        ("[1, 2]", "expected a JSON object with TRL's keys, found a list"),
        (
            "{\"question\": \"q\", \"answer\": \"a\"}",
            "no TRL format among the keys [question, answer]: expected text | messages | prompt+completion | prompt+chosen+rejected | chosen+rejected | prompt | prompt+completion+label",
        ),
    ];
    for (i, (line, message)) in bad_lines.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.jsonl"));
        // Two good rows and a blank line first: the bad one is on line 4.
        std::fs::write(&path, format!("{{\"text\": \"the cat\"}}\n\n{{\"text\": \"sat\"}}\n{line}\n")).unwrap();
        let err = first_error(&tok, &path);
        assert_eq!(err, format!("{}:4: {message}", path.display()));
        assert!(!err.contains('\n'));
    }

    // Parquet rows are named by their 0-based index.
    let (_, parquet) =
        write_both(dir.path(), "null_text", &[Col::Str("text", vec![Some("the cat"), Some("sat"), None, Some("mat")])]);
    assert_eq!(
        first_error(&tok, &parquet),
        format!(
            "{}: row 2 (0-based): field `text`: is null, and no other field gives the row a format",
            parquet.display()
        )
    );

    // Preference data needs a preference trainer: refused up front, naming the first row.
    let (jsonl, parquet) = write_both(dir.path(), "pref", &cases().swap_remove(4).1);
    for path in [jsonl, parquet] {
        let err = DataLoader::new(&options(vec![path.clone()]), &tok, Split::Train).err().unwrap().to_string();
        let at = if path.extension().unwrap() == "jsonl" { ":1" } else { ": row 0 (0-based)" };
        assert!(err.starts_with(&format!("{}{at}: a preference row needs a preference", path.display())), "{err}");
    }
    // ... and refused mid-file too, even when malformed rows may be skipped.
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed, "{\"text\": \"the cat\"}\n{\"prompt\": \"what\"}\n").unwrap();
    let mut o = options(vec![mixed.clone()]);
    o.skip_malformed = true;
    let err = DataLoader::new(&o, &tok, Split::Train).unwrap().next_batch().unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:2: a prompt-only row needs", mixed.display())), "{err}");

    // Files that are not data at all.
    let missing = dir.path().join("missing.jsonl");
    assert!(first_error(&tok, &missing).starts_with(&missing.display().to_string()));
    let csv = dir.path().join("data.csv");
    std::fs::write(&csv, "a,b\n").unwrap();
    assert!(first_error(&tok, &csv).contains("data.csv: unsupported data file type `.csv`"));
    let not_parquet = dir.path().join("broken.parquet");
    std::fs::write(&not_parquet, "not parquet").unwrap();
    assert!(first_error(&tok, &not_parquet).contains("broken.parquet: not a readable Parquet file"));
    let (_, no_columns) = write_both(dir.path(), "no_columns", &[Col::Str("question", vec![Some("q")])]);
    assert!(first_error(&tok, &no_columns).contains("no column of TRL's formats"));
}
