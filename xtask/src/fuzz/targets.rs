//! The fuzz targets: each feeds one kind of user file to the entry point the `llmtrain` binary reads it with,
//! then to what the binary does next with the value (a run config's role sections, a config.json's parameter
//! count), and reports the outcome as `Ok` or the one-line error a user would see.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use llmtrain_core::config::{ConfigSection, RunConfig};
use llmtrain_core::data::{DataLoader, DataOptions, LossOn, RowReader, Split};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::hf::{self, HfConfig, HostTensor, StorageDtype, TensorFiles};
use llmtrain_core::model::{LlamaModel, ModelConfig};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_memopt::MemoptSection;
use llmtrain_memopt::estimate::{
    AttentionImpl, BatchShape, EstimateInput, Method, MixedPrecision, Precision, count_params, estimate,
};

use super::mutate::Layout;

/// One input through the target: `Ok` when it ends in a value, else the error's text.
pub type Runner = Box<dyn FnMut(&[u8]) -> std::result::Result<(), String>>;

pub struct Target {
    pub name: &'static str,
    pub layout: Layout,
    /// Tokens of the format the mutator swaps in (keys, enum values, keywords), separated by whitespace.
    pub dict: &'static str,
    /// Valid inputs (they must all end in `Ok`), the start of the corpus.
    pub seeds: fn() -> Result<Vec<Vec<u8>>>,
    /// Builds the runner (a scratch directory, a model to load an adapter onto); it lives for the whole target.
    pub setup: fn() -> Result<Runner>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "run-config",
        layout: Layout::Text,
        dict: RUN_CONFIG_DICT,
        seeds: run_config_seeds,
        setup: run_config,
    },
    Target { name: "ds-config", layout: Layout::Text, dict: DS_CONFIG_DICT, seeds: ds_config_seeds, setup: ds_config },
    Target { name: "jsonl-rows", layout: Layout::Text, dict: ROWS_DICT, seeds: jsonl_seeds, setup: jsonl_rows },
    Target { name: "parquet-rows", layout: Layout::Binary, dict: "", seeds: parquet_seeds, setup: parquet_rows },
    Target {
        name: "safetensors-header",
        layout: Layout::Safetensors,
        dict: SAFETENSORS_DICT,
        seeds: safetensors_seeds,
        setup: safetensors_header,
    },
    Target {
        name: "tokenizer-json",
        layout: Layout::Text,
        dict: TOKENIZER_DICT,
        seeds: tokenizer_seeds,
        setup: tokenizer_json,
    },
    Target {
        name: "adapter-config",
        layout: Layout::Text,
        dict: ADAPTER_DICT,
        seeds: adapter_seeds,
        setup: adapter_config,
    },
    Target {
        name: "config-json",
        layout: Layout::Text,
        dict: CONFIG_JSON_DICT,
        seeds: config_json_seeds,
        setup: config_json,
    },
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("seed {}", path.display()))
}

/// Every file under `dir` (relative to the workspace) whose name ends in `suffix`, sorted.
fn files_in(dir: &str, suffix: &str) -> Result<Vec<Vec<u8>>> {
    let dir = root().join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("seed directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    paths.sort();
    paths.iter().map(|p| read(p)).collect()
}

fn seeds_of(paths: &[&str]) -> Result<Vec<Vec<u8>>> {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for path in paths {
        let seed = read(&root().join(path))?;
        if !seeds.contains(&seed) {
            seeds.push(seed);
        }
    }
    Ok(seeds)
}

fn scratch() -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("llmtrain-fuzz-").tempdir().context("a scratch directory")
}

/// Writes an input file. The old file is removed first: ext4 flushes a file truncated and rewritten in place on
/// close (`auto_da_alloc`), which made writing the input cost milliseconds.
fn put(path: &Path, input: &[u8]) -> std::result::Result<(), String> {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, input).map_err(text)
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

// ---- run-config: RunConfig::load, then every role section and the trainer choice, as `llmtrain train` does.

/// The role sections of the library crates (the binary's `ROLE_SECTIONS`).
const ROLE_SECTIONS: &[&str] = &[
    MemoptSection::NAME,
    llmtrain_fastlora::LoraSection::NAME,
    llmtrain_lightning::LoggingSection::NAME,
    llmtrain_lightning::EarlyStoppingSection::NAME,
    llmtrain_lightning::ModelCheckpointSection::NAME,
    llmtrain_lightning::TrainerSection::NAME,
    llmtrain_trl::sft::SftSection::NAME,
    llmtrain_trl::dpo::DpoSection::NAME,
    llmtrain_trl::orpo::OrpoSection::NAME,
    llmtrain_trl::kto::KtoSection::NAME,
    llmtrain_trl::reward::RewardSection::NAME,
    llmtrain_trl::online::GrpoSection::NAME,
    llmtrain_trl::online::RlooSection::NAME,
    llmtrain_trl::ppo::PpoSection::NAME,
    llmtrain_zero::ZeroSection::NAME,
    llmtrain_raytrain::ScalingSection::NAME,
    llmtrain_raytrain::RunSection::NAME,
    llmtrain_raytrain::FailureSection::NAME,
];

const RUN_CONFIG_DICT: &str = "\
    [model] [tokenizer] [data] [training] [output] [quantization] [memopt] [lora] [logging] [early_stopping] \
    [scaling] [run] [failure] num_workers launcher hostfile max_failures storage_path num_to_keep \
    [model_checkpoint] [trainer] [sft] [dpo] [orpo] [kto] [reward] [grpo] [rloo] [ppo] [zero] [[x]] = \"\" \
    [] {} true false path architecture hidden_size intermediate_size num_hidden_layers num_attention_heads \
    num_key_value_heads head_dim rope_theta max_position_embeddings tie_word_embeddings rms_norm_eps \
    train_files vocab_size min_frequency files seq_len batch_size packing shuffle loss_on skip_malformed \
    eval_fraction max_steps learning_rate lr_schedule warmup_steps warmup_type weight_decay adam_beta1 \
    adam_beta2 adam_epsilon gradient_accumulation_steps max_grad_norm seed logging_steps eval_steps \
    eval_batches save_steps save_total_limit sample_prompt sample_max_new_tokens accuracy_file \
    accuracy_samples deepspeed dir load_in_4bit bnb_4bit_quant_type bnb_4bit_use_double_quant \
    gradient_checkpointing checkpoint_offload mixed_precision attention flash_block fused_cross_entropy \
    cross_entropy_chunk fused_kernels loss_scale initial_scale_power loss_scale_window hysteresis \
    min_loss_scale r alpha dropout target_modules exclude_modules use_rslora use_dora loraplus_lr_ratio \
    loggers learning_rate_monitor throughput_monitor peak_flops monitor min_delta patience mode check_finite \
    save_top_k save_last every_n_train_steps max_epochs limit_train_batches fast_dev_run \
    num_sanity_val_steps strategy max_length completion_only_loss assistant_only_loss beta loss_type \
    loss_weights label_smoothing ref_model precompute_ref_log_probs desirable_weight undesirable_weight \
    center_rewards_coefficient num_generations max_completion_length temperature top_p top_k \
    use_bias_correction_kl epsilon epsilon_low epsilon_high num_iterations mask_truncated_completions \
    scale_rewards normalize_advantages reward_clip_range reward_funcs reward_weights reward_model \
    answer_column format_pattern soft_punish_cache algorithm rewards num_ppo_epochs num_mini_batches \
    response_length missing_eos_penalty kl_coef kl_estimator whiten_rewards cliprange cliprange_value \
    vf_coef gamma lam reward_model_path stage reduce_bucket_size offload_optimizer offload_param llama \
    mistral qwen2 nf4 fp16 bf16 no flash eager all completion-only assistant-only cosine linear constant log \
    min max cpu none nvme ddp sigmoid ipo hinge csv tensorboard all-linear";

fn run_config_seeds() -> Result<Vec<Vec<u8>>> {
    let mut seeds = files_in("configs", ".toml")?;
    seeds.extend(files_in("xtask/fuzz-seeds/run-config", ".toml")?);
    Ok(seeds)
}

fn run_config() -> Result<Runner> {
    let dir = scratch()?;
    let path = dir.path().join("run.toml");
    Ok(Box::new(move |input| {
        let _keep = &dir;
        put(&path, input)?;
        let config = RunConfig::load(&path, ROLE_SECTIONS).map_err(text)?;
        // Every section is read (the first error is the outcome), so a bad one does not hide the others.
        let results = [
            config.section::<MemoptSection>().map(drop),
            config.section::<llmtrain_fastlora::LoraSection>().map(drop),
            config.section::<llmtrain_lightning::LoggingSection>().map(drop),
            config.section::<llmtrain_lightning::EarlyStoppingSection>().map(drop),
            config.section::<llmtrain_lightning::ModelCheckpointSection>().map(drop),
            config.section::<llmtrain_lightning::TrainerSection>().map(drop),
            config.section::<llmtrain_trl::sft::SftSection>().map(drop),
            config.section::<llmtrain_trl::dpo::DpoSection>().map(drop),
            config.section::<llmtrain_trl::orpo::OrpoSection>().map(drop),
            config.section::<llmtrain_trl::kto::KtoSection>().map(drop),
            config.section::<llmtrain_trl::reward::RewardSection>().map(drop),
            config.section::<llmtrain_trl::online::GrpoSection>().map(drop),
            config.section::<llmtrain_trl::online::RlooSection>().map(drop),
            config.section::<llmtrain_trl::ppo::PpoSection>().map(drop),
            config.section::<llmtrain_zero::ZeroSection>().map(drop),
            config.section::<llmtrain_raytrain::ScalingSection>().map(drop),
            config.section::<llmtrain_raytrain::RunSection>().map(drop),
            config.section::<llmtrain_raytrain::FailureSection>().map(drop),
        ];
        let trainer = llmtrain_trl::trainer_section(&config).map(drop).map_err(text);
        // What a from-scratch run builds before it trains (the tokenizer's size stands in).
        let shape = config.scratch_model(256).validate();
        results.into_iter().map(|r| r.map_err(text)).chain([trainer, shape]).collect()
    }))
}

// ---- ds-config: apply_ds_config over a run config, then the accelerator's and ZeRO's settings from it.

const DS_CONFIG_DICT: &str = "\
    train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps gradient_clipping fp16 bf16 \
    optimizer scheduler zero_optimization enabled loss_scale initial_scale_power loss_scale_window \
    hysteresis min_loss_scale type params lr betas eps weight_decay adam_w_mode torch_adam warmup_min_lr \
    warmup_max_lr warmup_num_steps warmup_type total_num_steps stage reduce_bucket_size offload_optimizer \
    offload_param device pin_memory overlap_comm contiguous_gradients allgather_partitions reduce_scatter \
    allgather_bucket_size round_robin_gradients steps_per_print wall_clock_breakdown \
    zero_allow_untested_optimizer stage3_prefetch_bucket_size stage3_param_persistence_threshold \
    stage3_max_live_parameters stage3_max_reuse_distance stage3_gather_16bit_weights_on_model_save \
    sub_group_size auto AdamW Adam WarmupLR WarmupDecayLR linear log cpu none nvme true false null [] {} \
    \"\" [0.9,0.999]";

fn ds_config_seeds() -> Result<Vec<Vec<u8>>> {
    let mut seeds = files_in("configs", ".json")?;
    seeds.extend(files_in("xtask/fuzz-seeds/ds-config", ".json")?);
    Ok(seeds)
}

fn ds_config() -> Result<Runner> {
    let dir = scratch()?;
    let run_path = dir.path().join("run.toml");
    let run_text = "[model]\npath = \"model\"\n[data]\nfiles = [\"train.jsonl\"]\nseq_len = 64\nbatch_size = 4\n";
    let base = RunConfig::parse(run_text, &run_path, dir.path(), ROLE_SECTIONS)?;
    let path = dir.path().join("ds_config.json");
    Ok(Box::new(move |input| {
        let _keep = &dir;
        put(&path, input)?;
        // One rank and three: the batch triple divides by the ranks.
        for world in [1, 3] {
            let mut config = base.clone();
            let mut memopt = MemoptSection::default();
            let zero = llmtrain_zero::apply_ds_config(&path, &mut config, &mut memopt, world, 100).map_err(text)?;
            let accel = llmtrain_accel::AcceleratorConfig {
                gradient_accumulation_steps: config.training.gradient_accumulation_steps,
                mixed_precision: memopt.mixed_precision,
                loss_scale: llmtrain_core::train::LossScaleConfig::from(&memopt),
                ..Default::default()
            };
            accel.validate().map_err(text)?;
            let _scaler = llmtrain_core::train::LossScaler::new(accel.loss_scale);
            drop(zero.strategy::<CpuBackend>());
        }
        Ok(())
    }))
}

// ---- jsonl-rows and parquet-rows: RowReader (the TRL trainers' reader) and the causal-LM DataLoader.

const ROWS_DICT: &str = "\
    text messages prompt completion chosen rejected label margin role content user assistant system answer \
    null true false [] {} \"\" <s> </s> <|im_start|> <|im_end|> {%for%} {{x}} \\u0000 \\ud800 \\n";

fn jsonl_seeds() -> Result<Vec<Vec<u8>>> {
    let mut seeds = Vec::new();
    // The first rows of the repository's datasets, and one small file per TRL format.
    for path in ["data/sft/train.jsonl", "data/preference/train.jsonl", "data/grpo/train.jsonl"] {
        let text = read(&root().join(path))?;
        let rows: Vec<&[u8]> = text.split(|&b| b == b'\n').take(3).collect();
        seeds.push(rows.join(&b'\n'));
    }
    seeds.extend(files_in("xtask/fuzz-seeds/jsonl-rows", ".jsonl")?);
    Ok(seeds)
}

fn jsonl_rows() -> Result<Runner> {
    rows_runner("data.jsonl")
}

fn parquet_rows() -> Result<Runner> {
    rows_runner("data.parquet")
}

/// A tokenizer with a chat template, so `messages` rows render.
fn chat_tokenizer() -> Result<TextTokenizer> {
    Ok(TextTokenizer::load(&root().join("crates/trl/tests/fixtures/dpo_chat_tokenizer"))?)
}

fn rows_runner(file: &str) -> Result<Runner> {
    let dir = scratch()?;
    let path = dir.path().join(file);
    let tokenizer = chat_tokenizer()?;
    let mut run = 0u64;
    Ok(Box::new(move |input| {
        let _keep = &dir;
        put(&path, input)?;
        let mut first_error = None;
        let mut language_modeling = true;
        for row in RowReader::open(&path).map_err(text)?.take(10_000) {
            match row {
                Ok((_, row)) => language_modeling &= row.is_language_modeling(),
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        // The causal-LM loader refuses preference and prompt-only rows by design; it reads the rest.
        if !language_modeling {
            return first_error.map_or(Ok(()), Err);
        }
        // The loader's settings vary from input to input.
        run += 1;
        let options = DataOptions {
            files: vec![path.clone()],
            seq_len: 16 + (run % 3) as usize * 24,
            batch_size: 1 + (run % 2) as usize,
            packing: run.is_multiple_of(2),
            shuffle: run % 4 < 2,
            seed: run,
            loss_on: [LossOn::All, LossOn::CompletionOnly, LossOn::AssistantOnly][(run % 3) as usize],
            skip_malformed: !run.is_multiple_of(5),
            eval_fraction: 0.25,
            rank: 0,
            world_size: 1,
        };
        match DataLoader::single_pass(&options, &tokenizer, Split::Train) {
            Ok(mut loader) => {
                for _ in 0..1000 {
                    match loader.next_batch() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            first_error.get_or_insert(e.to_string());
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
        first_error.map_or(Ok(()), Err)
    }))
}

/// Small Parquet files in the layouts `datasets`/pyarrow write (strings, a message list, a boolean and a double
/// column), under each codec the reader supports, two row groups each.
fn parquet_seeds() -> Result<Vec<Vec<u8>>> {
    use parquet::basic::Compression;
    let codecs = [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::ZSTD(Default::default()),
        Compression::GZIP(Default::default()),
        Compression::LZ4_RAW,
    ];
    let mut seeds = Vec::new();
    for (i, codec) in codecs.into_iter().enumerate() {
        seeds.push(parquet_file(codec, i % 2 == 0)?);
    }
    Ok(seeds)
}

fn parquet_file(codec: parquet::basic::Compression, chat: bool) -> Result<Vec<u8>> {
    use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = if chat {
        "message schema { OPTIONAL group messages (LIST) { REPEATED group list { OPTIONAL group element { \
         OPTIONAL BYTE_ARRAY content (UTF8); OPTIONAL BYTE_ARRAY role (UTF8); } } } }"
    } else {
        "message schema { OPTIONAL BYTE_ARRAY prompt (UTF8); OPTIONAL BYTE_ARRAY completion (UTF8); \
         REQUIRED BOOLEAN label; OPTIONAL DOUBLE margin; }"
    };
    let schema = Arc::new(parse_message_type(schema)?);
    let props = Arc::new(WriterProperties::builder().set_compression(codec).build());
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props)?;
    for group_index in 0..2 {
        let mut group = writer.next_row_group()?;
        let word = |i: usize| ByteArray::from(format!("row {group_index}.{i} says hello").as_str());
        if chat {
            // Two rows of two messages; leaves in schema order: content, then role.
            for leaf in 0..2 {
                let values: Vec<ByteArray> = (0..4)
                    .map(|i| if leaf == 0 { word(i) } else { ByteArray::from(["user", "assistant"][i % 2]) })
                    .collect();
                let mut column = group.next_column()?.context("a column")?;
                column.typed::<ByteArrayType>().write_batch(&values, Some(&[4, 4, 4, 4]), Some(&[0, 1, 0, 1]))?;
                column.close()?;
            }
        } else {
            for _ in 0..2 {
                let values: Vec<ByteArray> = (0..3).map(word).collect();
                let mut column = group.next_column()?.context("a column")?;
                column.typed::<ByteArrayType>().write_batch(&values, Some(&[1, 1, 1]), None)?;
                column.close()?;
            }
            let mut column = group.next_column()?.context("a column")?;
            column.typed::<BoolType>().write_batch(&[true, false, true], None, None)?;
            column.close()?;
            let mut column = group.next_column()?.context("a column")?;
            column.typed::<DoubleType>().write_batch(&[0.5, -1.0], Some(&[1, 0, 1]), None)?;
            column.close()?;
        }
        group.close()?;
    }
    writer.close()?;
    Ok(out)
}

// ---- safetensors-header: hf::load_model of a checkpoint whose model.safetensors is the input.

const SAFETENSORS_DICT: &str = "\
    dtype shape data_offsets __metadata__ format pt F32 F16 BF16 F64 I64 I8 U8 BOOL F8_E4M3 \
    model.embed_tokens.weight model.norm.weight lm_head.weight model.layers.0.self_attn.q_proj.weight \
    model.layers.0.mlp.up_proj.weight [] {} null [0,0]";

/// The shape of the model whose checkpoint is fuzzed: one layer, grouped-query attention, every tensor kind.
fn tiny_model() -> ModelConfig {
    ModelConfig::tiny_llama(16, 8, 1, 2, 1)
}

fn safetensors_seeds() -> Result<Vec<Vec<u8>>> {
    let dir = scratch()?;
    let config = tiny_model();
    let tensors: Vec<(String, HostTensor)> = hf::tensor_specs(&config)
        .into_iter()
        .map(|(name, shape)| {
            let values = (0..shape.iter().product::<usize>()).map(|i| (i % 7) as f32 * 0.01).collect();
            (name, HostTensor { shape, values })
        })
        .collect();
    let refs: Vec<&(String, HostTensor)> = tensors.iter().collect();
    let mut seeds = Vec::new();
    for dtype in [StorageDtype::F32, StorageDtype::BF16, StorageDtype::F16] {
        let path = dir.path().join(format!("{}.safetensors", dtype.torch_name()));
        hf::write_safetensors_file(&path, &refs, dtype)?;
        seeds.push(read(&path)?);
    }
    Ok(seeds)
}

fn safetensors_header() -> Result<Runner> {
    let dir = scratch()?;
    let json = HfConfig::from_model(&tiny_model()).to_json("float32");
    std::fs::write(dir.path().join("config.json"), serde_json::to_string_pretty(&json)?)?;
    let path = dir.path().join(hf::SINGLE_FILE);
    let device = Default::default();
    Ok(Box::new(move |input| {
        put(&path, input)?;
        // Every tensor the file declares, in its own dtype and shape, then the model as `llmtrain` loads it.
        let files = TensorFiles::open(dir.path()).map_err(text)?;
        let names: Vec<String> = files.names().map(String::from).collect();
        for name in &names {
            let shape = files.shape(name).unwrap_or_default();
            if let Err(e) = files.read(name, &shape) {
                return Err(e.to_string());
            }
        }
        hf::load_model::<CpuBackend>(dir.path(), &device).map(drop).map_err(text)
    }))
}

// ---- tokenizer-json: TextTokenizer::load, then encoding, decoding and the chat template.

const TOKENIZER_DICT: &str = "\
    version truncation padding added_tokens normalizer pre_tokenizer post_processor decoder model type BPE \
    WordPiece WordLevel Unigram ByteLevel Sequence Metaspace Split NFC NFKC Lowercase Replace Strip \
    TemplateProcessing RobertaProcessing BertProcessing vocab merges unk_token dropout \
    continuing_subword_prefix end_of_word_suffix fuse_unk byte_fallback ignore_merges id content single_word \
    lstrip rstrip normalized special add_prefix_space trim_offsets use_regex pattern Regex String behavior \
    invert single pair special_tokens ids tokens SpecialToken Sequence type_id max_length stride strategy \
    direction pad_id pad_token <s> </s> <pad> <unk> Ġ null true false [] {} \"\" \"(\" \"\\\\p{L}+\"";

fn tokenizer_seeds() -> Result<Vec<Vec<u8>>> {
    seeds_of(&[
        "crates/core/tests/fixtures/llama_gqa_tied/tokenizer.json",
        "crates/trl/tests/fixtures/dpo_chat_tokenizer/tokenizer.json",
        "crates/trl/tests/fixtures/dpo_tokenizer/tokenizer.json",
        "crates/trl/tests/fixtures/reward_model/tokenizer.json",
    ])
}

fn tokenizer_json() -> Result<Runner> {
    let dir = scratch()?;
    let fixture = root().join("crates/core/tests/fixtures/llama_gqa_tied");
    for file in ["tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(fixture.join(file), dir.path().join(file))?;
    }
    let path = dir.path().join("tokenizer.json");
    Ok(Box::new(move |input| {
        put(&path, input)?;
        let tokenizer = TextTokenizer::load(dir.path()).map_err(text)?;
        let ids = tokenizer.encode("Hello wörld <s> 12 </s>\n\tend").map_err(text)?;
        tokenizer.decode(&ids, false).map_err(text)?;
        tokenizer.decode(&ids, true).map_err(text)?;
        let messages =
            [llmtrain_core::chat::Message::new("user", "hi"), llmtrain_core::chat::Message::new("assistant", "hello")];
        let rendered = tokenizer.apply_chat_template(&messages, true).map_err(text)?;
        tokenizer.encode(&rendered).map(drop).map_err(text)
    }))
}

// ---- adapter-config: fastlora's load_adapter onto the fixture base model, as `llmtrain generate --adapter`.

const ADAPTER_DICT: &str = "\
    r lora_alpha lora_dropout target_modules exclude_modules use_rslora use_dora init_lora_weights \
    rank_pattern alpha_pattern base_model_name_or_path bias fan_in_fan_out modules_to_save \
    layers_to_transform lora_bias peft_type task_type layers_pattern inference_mode revision LORA CAUSAL_LM \
    gaussian all-linear q_proj k_proj v_proj o_proj gate_proj up_proj down_proj none all null true false [] \
    {} \"\" \".*\" \"(\" \"[\" \"a{99999}\" \"\\\\\"";

/// The adapter fixtures: their configs are the seeds, their weights sit beside each input.
const ADAPTERS: &[&str] = &["lora", "dora_rslora", "regex_pattern"];

fn adapter_seeds() -> Result<Vec<Vec<u8>>> {
    let paths: Vec<String> =
        ADAPTERS.iter().map(|a| format!("crates/fastlora/tests/fixtures/{a}/adapter_config.json")).collect();
    seeds_of(&paths.iter().map(String::as_str).collect::<Vec<_>>())
}

fn adapter_config() -> Result<Runner> {
    let fixtures = root().join("crates/fastlora/tests/fixtures");
    let device = Default::default();
    let (base, _): (LlamaModel<CpuBackend>, _) = hf::load_model(&fixtures.join("base"), &device)?;
    let dir = scratch()?;
    let dirs: Vec<PathBuf> = ADAPTERS.iter().map(|a| dir.path().join(a)).collect();
    for (adapter, to) in ADAPTERS.iter().zip(&dirs) {
        std::fs::create_dir_all(to)?;
        std::fs::copy(fixtures.join(adapter).join("adapter_model.safetensors"), to.join("adapter_model.safetensors"))?;
    }
    Ok(Box::new(move |input| {
        let _keep = &dir;
        // The config against each fixture's weights: any of them may be the one it fits.
        let mut outcome = Ok(());
        for to in &dirs {
            put(&to.join("adapter_config.json"), input)?;
            let mut model = base.clone();
            match llmtrain_fastlora::load_adapter(&mut model, to, &device) {
                Ok(config) => {
                    config.to_json();
                    return Ok(());
                }
                Err(e) => outcome = Err(e.to_string()),
            }
        }
        outcome
    }))
}

// ---- config-json: HfConfig::load, then what load_model and estimate-memory compute from the shape.

const CONFIG_JSON_DICT: &str = "\
    architectures model_type vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads \
    num_key_value_heads head_dim hidden_act rms_norm_eps rope_theta rope_scaling rope_parameters rope_type \
    type factor low_freq_factor high_freq_factor original_max_position_embeddings max_position_embeddings \
    tie_word_embeddings attention_bias mlp_bias sliding_window use_sliding_window bos_token_id eos_token_id \
    pad_token_id torch_dtype dtype id2label label2id num_labels llama mistral qwen2 silu gelu default linear \
    llama3 yarn LlamaForCausalLM MistralForCausalLM Qwen2ForCausalLM LlamaForSequenceClassification \
    Qwen2ForSequenceClassification bfloat16 float16 float32 null true false [] {} \"\" [1,2]";

/// Checkpoints whose config.json are the seeds; each input is loaded against each one's weights.
const CHECKPOINTS: &[&str] = &[
    "crates/core/tests/fixtures/llama_gqa_tied",
    "crates/core/tests/fixtures/qwen2_bias",
    "crates/core/tests/fixtures/mistral_mqa",
    "crates/fastlora/tests/fixtures/base",
    "crates/trl/tests/fixtures/reward_model",
];

fn config_json_seeds() -> Result<Vec<Vec<u8>>> {
    let paths: Vec<String> = CHECKPOINTS.iter().map(|c| format!("{c}/config.json")).collect();
    seeds_of(&paths.iter().map(String::as_str).collect::<Vec<_>>())
}

fn config_json() -> Result<Runner> {
    let dir = scratch()?;
    let mut dirs = Vec::new();
    for (i, checkpoint) in CHECKPOINTS.iter().enumerate() {
        let to = dir.path().join(i.to_string());
        std::fs::create_dir_all(&to)?;
        std::fs::copy(root().join(checkpoint).join(hf::SINGLE_FILE), to.join(hf::SINGLE_FILE))?;
        dirs.push(to);
    }
    let device = Default::default();
    Ok(Box::new(move |input| {
        let _keep = &dir;
        for to in &dirs {
            put(&to.join("config.json"), input)?;
        }
        let config = HfConfig::load(&dirs[0]).map_err(text)?;
        let model = &config.model;
        model.num_parameters();
        config.to_json("bfloat16");
        // `llmtrain estimate-memory --model DIR`, full and LoRA, with a batch.
        for method in [Method::Full, Method::Lora] {
            let input = EstimateInput {
                params: count_params(model),
                model: Some(model.clone()),
                method,
                lora_rank: 8,
                precision: Precision::Mixed,
                compute: MixedPrecision::Bf16,
                attention: AttentionImpl::Flash,
                zero_stage: 3,
                gpus: 2,
                offload: llmtrain_memopt::estimate::Offload::None,
                batch: Some(BatchShape { batch: 2, seq: 512 }),
                gradient_checkpointing: true,
                fused_loss_chunk: Some(128),
            };
            estimate(&input).map_err(text)?;
        }
        // The model, as `llmtrain generate` (or `score`, for a classifier) loads it: a value when the config fits
        // one of the checkpoints' weights.
        let mut outcome = Ok(());
        for to in &dirs {
            let loaded = match config.head {
                hf::Head::CausalLm => hf::load_model::<CpuBackend>(to, &device).map(drop),
                hf::Head::SequenceClassification { .. } => {
                    hf::load_sequence_classifier::<CpuBackend>(to, &device).map(drop)
                }
            };
            match loaded {
                Ok(()) => return Ok(()),
                Err(e) => outcome = Err(e.to_string()),
            }
        }
        outcome
    }))
}
