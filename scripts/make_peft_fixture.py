#!/usr/bin/env python3
"""Makes the PEFT fixtures llmtrain-fastlora's tests compare against.

Needs python3 with torch, transformers, peft and safetensors (pip install torch transformers peft safetensors; CPU
is enough). Run from the repository root:

    python3 scripts/make_peft_fixture.py [--out crates/fastlora/tests/fixtures]

It builds a tiny randomly initialised Llama with transformers (`base/`, an HF checkpoint directory), then three
adapters with PEFT, each saved with `save_pretrained` exactly as PEFT writes them:

- `lora/`: r=4, alpha=8, target_modules ["q_proj", "v_proj", "down_proj"];
- `dora_rslora/`: "all-linear", r=4, alpha=6, use_dora, use_rslora;
- `regex_pattern/`: a regex target (the MLP of layer 1 and k_proj of every layer) with rank_pattern
  {"down_proj": 2} and alpha_pattern {"k_proj": 3}.

Adapters start with `init_lora_weights=False` (B random, so they change the output) and DoRA's magnitude is then
perturbed so it differs from the row norms. Each directory's `expected.safetensors` holds `tokens` [T] i64,
`logits` [T, V] f32 of the base with the adapter, and `merged_logits` of `merge_and_unload()`.
"""
import argparse
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

TOKENS = [3, 17, 42, 99, 5, 120, 64, 7, 88, 31, 2, 11]

ADAPTERS = {
    "lora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    "dora_rslora": dict(r=4, lora_alpha=6, target_modules="all-linear", use_dora=True, use_rslora=True),
    "regex_pattern": dict(
        r=4,
        lora_alpha=8,
        target_modules=r".*\.1\.mlp\.(gate|up|down)_proj|.*\.k_proj",
        rank_pattern={"down_proj": 2},
        alpha_pattern={"k_proj": 3},
    ),
}


def base_model(seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0)
    model = LlamaForCausalLM(cfg).eval()
    # transformers' init is normal(0, 0.02); widen it so adapters and base contribute comparably.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="crates/fastlora/tests/fixtures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    base_dir = os.path.join(args.out, "base")
    base_model(args.seed).save_pretrained(base_dir, safe_serialization=True)
    tokens = torch.tensor([TOKENS])
    for i, (name, kwargs) in enumerate(ADAPTERS.items()):
        model = base_model(args.seed)
        torch.manual_seed(args.seed + 100 + i)
        peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM", **kwargs))
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_magnitude_vector" in pname:
                    p.mul_(1.0 + 0.1 * torch.randn_like(p))
        peft_model.eval()
        out_dir = os.path.join(args.out, name)
        peft_model.save_pretrained(out_dir)
        os.remove(os.path.join(out_dir, "README.md"))  # PEFT's model card: not part of the format
        with torch.no_grad():
            logits = peft_model(tokens).logits[0].float()
            merged = peft_model.merge_and_unload()
            merged_logits = merged(tokens).logits[0].float()
        save_file({"tokens": tokens[0].to(torch.int64), "logits": logits.contiguous(),
                   "merged_logits": merged_logits.contiguous()},
                  os.path.join(out_dir, "expected.safetensors"), metadata={"format": "pt"})
        print(name, "max |adapter - merged|", (logits - merged_logits).abs().max().item())


if __name__ == "__main__":
    main()
