#!/usr/bin/env python3
"""Checks llmtrain against transformers on checkpoints the tests never saw, in both directions.

Needs python3 with torch and transformers, and a built llmtrain (cargo build --release -p llmtrain-cli).
Run from the repository root:

    python3 scripts/verify_hf.py [--llmtrain target/release/llmtrain] [--seed 1234]

1. transformers → llmtrain: fresh random Llama (GQA, tied, llama3 RoPE), Qwen2 (bias) and Mistral (one KV head,
   sliding window) checkpoints, in transformers' own 5.x config form and rewritten into the 4.x form, in f32 and
   bf16; `llmtrain logits` must match transformers' logits within 1e-4 (max abs, fp32).
2. llmtrain → transformers: `llmtrain convert` re-saves each (single file, sharded, bf16); transformers loads the
   result and must give the same logits.
3. Tokenizer: `llmtrain tokenizer train` output loads in transformers' AutoTokenizer with the same ids and chat text.
Prints one line per check with the measured max |Δ| and exits non-zero on any failure.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

TOL = 1e-4
SHAPES = [
    ("llama", dict(vocab_size=320, hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=6,
                   num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=512,
                   rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                   rope_theta=500000.0)),
    ("qwen2", dict(vocab_size=300, hidden_size=80, intermediate_size=144, num_hidden_layers=2, num_attention_heads=5,
                   num_key_value_heads=1, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=1000000.0)),
    ("mistral", dict(vocab_size=280, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                     num_key_value_heads=1, head_dim=16, tie_word_embeddings=False, sliding_window=7,
                     rope_theta=10000.0)),
]
TOKENS = [1, 5, 9, 200, 17, 4, 77, 150, 3, 3, 99, 250, 12, 42, 7, 8]
failures = []


def report(name, diff, tol=TOL):
    ok = diff <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max |Δlogits| = {diff:.3e}")
    if not ok:
        failures.append(name)


def build(arch, cfg, seed, dtype):
    import transformers as tf
    classes = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
               "mistral": (tf.MistralConfig, tf.MistralForCausalLM)}
    torch.manual_seed(seed)
    model = classes[arch][1](classes[arch][0](**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    return model.to(dtype)


def hf_logits(path):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([TOKENS])).logits[0]


def llmtrain_logits(exe, path, out):
    subprocess.run([exe, "logits", "--model", path, "--tokens", ",".join(map(str, TOKENS)), "--out", out], check=True)
    return load_file(out)["logits"]


def to_four_x(path):
    """Rewrites a 5.x config.json (rope_parameters) into the 4.x form (rope_theta + rope_scaling)."""
    p = os.path.join(path, "config.json")
    cfg = json.load(open(p))
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = None if params.get("rope_type") == "default" else params
    cfg["torch_dtype"] = cfg.pop("dtype")
    json.dump(cfg, open(p, "w"), indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llmtrain", default="target/release/llmtrain")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="llmtrain-verify-")
    out = os.path.join(tmp, "logits.safetensors")
    for i, (arch, cfg) in enumerate(SHAPES):
        for dtype in (torch.float32, torch.bfloat16):
            for form in ("5.x", "4.x"):
                name = f"{arch}-{str(dtype).split('.')[-1]}-{form}"
                src = os.path.join(tmp, name)
                build(arch, cfg, a.seed + i, dtype).save_pretrained(src)
                if form == "4.x":
                    to_four_x(src)
                want = hf_logits(src)
                report(f"transformers→llmtrain {name}", (llmtrain_logits(a.llmtrain, src, out) - want).abs().max().item())
                variants = [("single", []), ("sharded", ["--max-shard-size", "50KB"]), ("bf16", ["--dtype", "bfloat16"])]
                for variant, flags in variants:
                    dst = src + "-" + variant
                    subprocess.run([a.llmtrain, "convert", "--model", src, "--out", dst] + flags, check=True,
                                   stdout=subprocess.DEVNULL)
                    got = hf_logits(dst)
                    if variant == "bf16" and dtype == torch.float32:
                        # Rounding f32 weights to bf16 changes the model; compare with transformers' own rounding.
                        ref = os.path.join(tmp, name + "-torch-bf16")
                        build(arch, cfg, a.seed + i, torch.bfloat16).save_pretrained(ref)
                        want_v = hf_logits(ref)
                    else:
                        want_v = want
                    report(f"llmtrain→transformers {name} {variant}", (got - want_v).abs().max().item())
    # Tokenizer trained by llmtrain, loaded by transformers.
    from transformers import AutoTokenizer
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40)
    tokdir = os.path.join(tmp, "tok")
    subprocess.run([a.llmtrain, "tokenizer", "train", "--files", corpus, "--vocab-size", "400", "--out", tokdir],
                   check=True, stdout=subprocess.DEVNULL)
    tok = AutoTokenizer.from_pretrained(tokdir)
    for text in ["To be, or not to be", "Whether 'tis nobler — ünïcödé 123"]:
        ours = subprocess.run([a.llmtrain, "tokenizer", "encode", "--tokenizer", tokdir, "--text", text],
                              check=True, capture_output=True, text=True).stdout.strip()
        theirs = ",".join(map(str, tok(text).input_ids))
        ok = ours == theirs
        print(f"{'ok  ' if ok else 'FAIL'} tokenizer ids {text!r}: llmtrain {ours} / transformers {theirs}")
        if not ok:
            failures.append("tokenizer " + text)
        ours = subprocess.run([a.llmtrain, "tokenizer", "encode", "--tokenizer", tokdir, "--text", text, "--chat"],
                              check=True, capture_output=True, text=True).stdout.strip()
        theirs = ",".join(map(str, tok.apply_chat_template([{"role": "user", "content": text}],
                                                           add_generation_prompt=True, tokenize=True, return_dict=False)))
        ok = ours == theirs
        print(f"{'ok  ' if ok else 'FAIL'} chat ids {text!r}: llmtrain {ours} / transformers {theirs}")
        if not ok:
            failures.append("chat " + text)
    print(f"{len(failures)} failed" if failures else "all checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
