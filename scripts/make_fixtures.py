#!/usr/bin/env python3
"""Makes the small reference fixtures that llmtrain's tests compare against.

Needs python3 with torch and transformers (pip install torch transformers). Run from the repository root:

    python3 scripts/make_fixtures.py [--out crates/core/tests/fixtures] [--seed 0]

For each architecture it builds a tiny randomly initialised model with transformers, saves it as an HF checkpoint
directory (config.json + model.safetensors, as transformers writes them), and stores the logits transformers computes
for fixed token ids in `expected.safetensors` (tensors `tokens` [T] i64, `logits` [T, V] f32, `loss` [1] (the causal-LM
loss with labels = tokens), plus `packed_*` for a packed batch with restarting position ids). It also renders three
chat templates with `apply_chat_template` and keeps the strings in `chat_templates.json`. With a different --seed and --out it makes checkpoints the tests never saw.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

SHAPES = {
    # Llama with grouped-query attention (4 heads over 2 KV heads) and tied embeddings, llama3 RoPE scaling.
    "llama_gqa_tied": dict(
        arch="llama",
        cfg=dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                 max_position_embeddings=256, rms_norm_eps=1e-5,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                 rope_theta=500000.0),
    ),
    # Qwen2: q/k/v projections carry a bias; untied head.
    "qwen2_bias": dict(
        arch="qwen2",
        cfg=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                 max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0),
    ),
    # Mistral with a single KV head (multi-query attention), an explicit head_dim != hidden/heads, and a sliding
    # window of 4 that binds on the 12-token input.
    "mistral_mqa": dict(
        arch="mistral",
        cfg=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=24, tie_word_embeddings=False,
                 max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4),
    ),
}

TOKENS = [1, 17, 42, 99, 3, 255, 128, 64, 7, 200, 31, 5]
# A packed row: three sequences of lengths 5, 4 and 3, position ids restarting at each.
PACKED_POSITIONS = [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]

CHAT_TEMPLATES = {
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "chatml": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
}
SPECIAL = {
    "llama3": dict(bos="<|begin_of_text|>", eos="<|eot_id|>"),
    "chatml": dict(bos=None, eos="<|im_end|>"),
    "mistral": dict(bos="<s>", eos="</s>"),
}
CONVERSATIONS = [
    [{"role": "user", "content": "  Hello there!  "}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another?"}],
]


GENERATE_PROMPT = "To be, or not to be"
TOKENIZER_TEXT = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them.
""" * 20


def adamw_reference(model, out_path):
    """Three AdamW steps (torch.optim.AdamW; no weight decay on 1-D tensors, as transformers' Trainer) with global
    grad-norm clipping on the causal-LM loss of a two-row batch, from a copy of the model. Stores each step's
    loss and grad norm, and some tensors after the last step."""
    import copy
    model = copy.deepcopy(model).train()
    batch = torch.tensor([TOKENS, TOKENS[::-1]])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    losses, norms = [], []
    for _ in range(3):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5).item())
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    names = ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.layers.1.mlp.down_proj.weight",
             "model.layers.0.self_attn.q_proj.weight"]
    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().contiguous() for n in names}
    tensors["losses"] = torch.tensor(losses)
    tensors["grad_norms"] = torch.tensor(norms)
    tensors["batch"] = batch.to(torch.int64)
    save_file(tensors, out_path, metadata={"format": "pt"})


def make_tokenizer(out_dir):
    """A byte-level BPE tokenizer (300 ids) made with HF tokenizers, saved as transformers saves one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TOKENIZER_TEXT], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATES["llama3"]
    fast.save_pretrained(out_dir)
    return fast


def make_model(arch, cfg, seed):
    import transformers as tf
    cls_cfg = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[arch]
    cls_model = {"llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM, "mistral": tf.MistralForCausalLM}[arch]
    torch.manual_seed(seed)
    config = cls_cfg(**cfg)
    model = cls_model(config).eval()
    # Random init leaves norms at 1 and biases at 0: perturb them so the test sees every tensor.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    return model


def chat_fixtures():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    out = []
    for name, template in CHAT_TEMPLATES.items():
        sp = SPECIAL[name]
        vocab = {"<unk>": 0, sp["eos"]: 1}
        if sp["bos"]:
            vocab[sp["bos"]] = 2
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                      bos_token=sp["bos"], eos_token=sp["eos"], unk_token="<unk>")
        tok.chat_template = template
        for conv in CONVERSATIONS:
            for agp in (False, True):
                try:
                    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
                    err = None
                except Exception as e:  # raise_exception() in the template
                    text, err = None, str(e)
                out.append(dict(template=name, messages=conv, add_generation_prompt=agp, bos_token=sp["bos"],
                                eos_token=sp["eos"], rendered=text, error=err))
    return dict(templates=CHAT_TEMPLATES, cases=out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="crates/core/tests/fixtures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(SHAPES))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    names = a.only.split(",") if a.only else list(SHAPES)
    for i, name in enumerate(names):
        spec = SHAPES[name]
        model = make_model(spec["arch"], spec["cfg"], a.seed + i)
        d = os.path.join(a.out, name)
        model.save_pretrained(d)
        tokens = torch.tensor([TOKENS])
        with torch.no_grad():
            out = model(input_ids=tokens, labels=tokens)
            logits, loss = out.logits[0].float(), out.loss.float().reshape(1)
            # Packed: one row, position ids restarting per sequence. transformers detects the restarts and keeps
            # attention within each sequence; we store each sequence's own logits concatenated as the reference.
            packed, start = [], 0
            for length in (5, 4, 3):
                packed.append(model(input_ids=tokens[:, start:start + length]).logits[0].float())
                start += length
            packed = torch.cat(packed, 0)
        extra = {}
        if name == "llama_gqa_tied":
            # Greedy generation reference: tokenizer + model.generate, for `llmtrain generate`.
            tok = make_tokenizer(d)
            prompt = tok(GENERATE_PROMPT, return_tensors="pt").input_ids
            with torch.no_grad():
                out = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
            new = out[0, prompt.shape[1]:]
            extra = {"generate_prompt": prompt[0].to(torch.int64), "generate_output": new.to(torch.int64)}
            adamw_reference(model, os.path.join(d, "train_expected.safetensors"))
            with open(os.path.join(d, "generate_expected.txt"), "w") as f:
                f.write(GENERATE_PROMPT + tok.decode(new, skip_special_tokens=True) + "\n")
        save_file({**extra, "tokens": tokens[0].to(torch.int64), "logits": logits.contiguous(),
                   "packed_positions": torch.tensor(PACKED_POSITIONS, dtype=torch.int64),
                   "packed_logits": packed.contiguous(), "loss": loss},
                  os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
        print(name, "logits", tuple(logits.shape))
    with open(os.path.join(a.out, "chat_templates.json"), "w") as f:
        json.dump(chat_fixtures(), f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
