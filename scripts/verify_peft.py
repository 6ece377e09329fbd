#!/usr/bin/env python3
"""Checks an adapter llmtrain wrote against PEFT: PEFT loads it onto the base, and its logits equal
`llmtrain logits --adapter`'s (and a `llmtrain merge` checkpoint's) within 1e-4.

Needs python3 with torch, transformers, peft and safetensors, and a built llmtrain. Run from the repository root:

    python3 scripts/verify_peft.py --base BASE_DIR --adapter ADAPTER_DIR [--llmtrain target/release/llmtrain]

For example after `llmtrain train --config configs/sft-lora.toml`: `--base runs/quickstart/final --adapter
runs/sft-lora/final`. Exits non-zero when a difference exceeds the tolerance.
"""
import argparse
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

TOKENS = [1, 17, 42, 99, 3, 255, 128, 64, 7, 200, 31, 5]


def llmtrain_logits(binary, args, out):
    subprocess.run([binary, "logits", *args, "--tokens", ",".join(map(str, TOKENS)), "--out", out], check=True)
    return load_file(out)["logits"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--llmtrain", default="target/release/llmtrain")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    base = AutoModelForCausalLM.from_pretrained(args.base, torch_dtype=torch.float32).eval()
    vocab = base.config.vocab_size
    tokens = [t % vocab for t in TOKENS]
    TOKENS[:] = tokens
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    with torch.no_grad():
        peft_logits = model(torch.tensor([tokens])).logits[0].float()
    with tempfile.TemporaryDirectory() as tmp:
        ours = llmtrain_logits(args.llmtrain, ["--model", args.base, "--adapter", args.adapter], f"{tmp}/a.st")
        merged_dir = f"{tmp}/merged"
        subprocess.run([args.llmtrain, "merge", "--base", args.base, "--adapter", args.adapter, "--out", merged_dir],
                       check=True, stdout=subprocess.DEVNULL)
        merged = llmtrain_logits(args.llmtrain, ["--model", merged_dir], f"{tmp}/m.st")
        hf_merged = AutoModelForCausalLM.from_pretrained(merged_dir, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            hf_merged_logits = hf_merged(torch.tensor([tokens])).logits[0].float()
    base_only = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(args.base, torch_dtype=torch.float32), args.adapter)
    with torch.no_grad(), base_only.disable_adapter():
        effect = (base_only(torch.tensor([tokens])).logits[0].float() - peft_logits).abs().max().item()
    diffs = {
        "llmtrain --adapter vs PEFT": (ours - peft_logits).abs().max().item(),
        "llmtrain merge (llmtrain) vs PEFT": (merged - peft_logits).abs().max().item(),
        "llmtrain merge (transformers) vs PEFT": (hf_merged_logits - peft_logits).abs().max().item(),
    }
    for name, diff in diffs.items():
        print(f"{name}: max |diff| {diff:.2e}")
    print(f"(the adapter moves the logits by up to {effect:.2e})")
    if any(d > args.tolerance for d in diffs.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
