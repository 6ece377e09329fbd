#!/usr/bin/env python3
"""Makes the QLoRA (4-bit NF4 base) fixture llmtrain-fastlora's tests compare against.

Needs python3 with torch, transformers, peft, safetensors and bitsandbytes (pip install torch transformers peft
safetensors bitsandbytes; CPU is enough, no GPU is used). Made with torch 2.15.0+cu132, transformers 5.24.0,
peft 0.21.2, bitsandbytes 0.50.2, safetensors 0.8.0 (the script prints the versions it ran with). Run from the
repository root:

    python3 scripts/make_qlora_fixture.py [--fixtures crates/fastlora/tests/fixtures]

It makes nothing random and regenerates nothing: it loads the committed tiny Llama `base/` and the committed
adapters `lora/` and `dora_rslora/` made by scripts/make_peft_fixture.py, and writes one file,
`qlora_expected.safetensors`, next to them, holding:

- `tokens` [T] i64: the same TOKENS as make_peft_fixture.py (checked against `lora/expected.safetensors`);
- `base_logits` [T, V] f32: logits of `base/` loaded by transformers with
  `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
  bnb_4bit_compute_dtype=torch.float32)`, `dtype=torch.float32`, `device_map="cpu"`;
- `lora_logits` [T, V] f32: that 4-bit base with `lora/` loaded by `PeftModel.from_pretrained`, eval mode;
- `dora_logits` [T, V] f32: the same with `dora_rslora/` (DoRA + rsLoRA on all linears; PEFT takes the DoRA
  weight norm of the dequantized 4-bit weight);
- `plain_base_logits` [T, V] f32: as `base_logits` but with `bnb_4bit_use_double_quant=False` (absmax kept f32);
- `q_proj_dequantized` [out, in] = [32, 32] f32: `bitsandbytes.functional.dequantize_4bit` of the Params4bit
  of `model.layers.0.self_attn.q_proj` of the double-quant load, i.e. NF4 with blocksize 64 over the row-major
  flattened [out, in] weight, absmax double-quantized to 8 bits (dynamic map, blocksize 256, minus its mean as
  offset). The script asserts it equals a fresh `quantize_4bit(W, blocksize=64, quant_type="nf4",
  compress_statistics=True)` + `dequantize_4bit` of the dense f32 weight.

What transformers quantizes (checked by the script, which fails otherwise): every nn.Linear inside the decoder
layers becomes a `bitsandbytes.nn.Linear4bit` (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj of
both layers: 14 modules); `lm_head` stays a plain f32 nn.Linear (transformers' quantizer skips the output
embedding), and `embed_tokens` and the RMSNorms are not Linear and stay f32.

CPU workarounds (bitsandbytes 0.50.2 on CPU has two problems with this tiny model; the script works around both
so that it computes what bitsandbytes computes on CUDA, and nothing numeric is re-implemented here):

1. `dequantize_4bit`'s CPU C kernel (`cdequantize_blockwise_cpu_nf4_fp32`) takes the weight as [out, in] rows and
   picks the wrong absmax when in_features is not a multiple of the blocksize (here in = 32 < 64: all 16 blocks
   of q_proj were scaled by absmax[0], giving errors up to 0.39 on weights up to 0.75; on a randn [32, 32] or
   [32, 96] it is off by 1.5; it agrees with the generic code for in = 64, 128). The quantizer itself (bitsandbytes' generic "default" `quantize_4bit`, also used on CPU)
   is right: blocks of 64 over the flattened weight, as on CUDA. The script re-registers bitsandbytes' own
   generic `_dequantize_4bit_compute` (bitsandbytes/backends/default/ops.py) as the CPU kernel of
   `bitsandbytes::dequantize_4bit` before anything runs, and asserts that the result stays within the NF4
   rounding bound of the dense weight.
2. On a CPU with AVX512-BF16, Linear4bit.forward (eval, no grad) first repacks the weight into a CPU-specific
   layout (`_convert_weight_packed_for_cpu`) that reshapes absmax to [out, in / blocksize] and casts it and the
   compute to bf16. With in = 32 that fails ("shape '[32, 0]' is invalid"), and it would in any case round to
   bf16 and depend on the host CPU. The script sets `support_avx512bf16_for_cpu = False` on every Linear4bit (a
   no-op on CPUs without AVX512-BF16), so bitsandbytes takes its generic path, `F.linear(x, dequantize_4bit(W))`
   in f32 with the double-quant absmax dequantized first (8-bit dynamic code times the f32 absmax of its block
   of 256, plus the offset).

Checked when this fixture was made (not by the script): `plain_base_logits` equals bit for bit the dense f32 model
with every decoder Linear weight replaced by a pure-torch NF4 round trip (nearest code, absmax of each block of 64
of the flattened weight); the double-quant results are within 0.02 of the plain ones. The quantization error is
large for this tiny wide-init model (weights ~ N(0, 0.2)): max |base_logits - dense base logits| = 1.12 (dense
logits up to 3.48), max |lora_logits - lora/expected logits| = 1.49, max |dora_logits - dora_rslora/expected| =
2.36, so tests should compare against these 4-bit references, not against the dense ones.
"""
import argparse
import os

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code
import peft
import safetensors
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

TOKENS = [3, 17, 42, 99, 5, 120, 64, 7, 88, 31, 2, 11]  # same list as scripts/make_peft_fixture.py

def _generic_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    """bitsandbytes' own "default" dequantize_4bit kernel (flattened blocks), used in place of the CPU one."""
    if A.dtype != torch.uint8:
        A = A.view(torch.uint8)
    return _dequantize_4bit_compute(A.reshape(-1), absmax, _get_4bit_code(quant_type, A.device), blocksize, shape,
                                    dtype)


torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu")(_generic_dequantize_4bit)

DECODER_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_4bit(base_dir, double_quant):
    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=qcfg, dtype=torch.float32,
                                                 device_map="cpu").eval()
    n_layers = model.config.num_hidden_layers
    quantized = sorted(n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    expected = sorted(f"model.layers.{i}.{'self_attn' if p in DECODER_LINEARS[:4] else 'mlp'}.{p}"
                      for i in range(n_layers) for p in DECODER_LINEARS)
    assert quantized == expected, quantized
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert type(model.model.embed_tokens) is torch.nn.Embedding
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 or isinstance(p, bnb.nn.Params4bit), (n, p.dtype)
    for n, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            qs = m.weight.quant_state
            assert qs.quant_type == "nf4" and qs.blocksize == 64 and qs.nested == double_quant, n
            # See the docstring: keep bitsandbytes on its generic dequantize + f32 matmul path.
            m.support_avx512bf16_for_cpu = False
    return model, quantized


def logits_of(model, tokens):
    with torch.no_grad():
        return model(tokens).logits[0].float().contiguous()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixtures", default="crates/fastlora/tests/fixtures")
    args = parser.parse_args()
    print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
          "bitsandbytes", bnb.__version__, "safetensors", safetensors.__version__)
    base_dir = os.path.join(args.fixtures, "base")
    tokens = torch.tensor([TOKENS], dtype=torch.int64)
    lora_expected = load_file(os.path.join(args.fixtures, "lora", "expected.safetensors"))
    assert torch.equal(lora_expected["tokens"], tokens[0]), "TOKENS differ from lora/expected.safetensors"

    dense = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    dense_logits = logits_of(dense, tokens)
    dense_q = dense.model.layers[0].self_attn.q_proj.weight.detach().clone()

    out = {"tokens": tokens[0].clone()}
    model, quantized = load_4bit(base_dir, double_quant=True)
    print("Linear4bit modules:", ", ".join(quantized))
    print("not quantized: lm_head", type(model.lm_head).__name__, "embed_tokens",
          type(model.model.embed_tokens).__name__)
    w = model.model.layers[0].self_attn.q_proj.weight
    q_deq = bnbf.dequantize_4bit(w.data, w.quant_state).float().contiguous()
    assert list(q_deq.shape) == list(dense_q.shape)
    packed, state = bnbf.quantize_4bit(dense_q, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(bnbf.dequantize_4bit(packed, state).float(), q_deq), "load-time quantization differs"
    # NF4 rounding bound: half the widest gap of the code (1 - 0.7230) times the block's absmax, plus slack for
    # the 8-bit absmax of double quant.
    block_absmax = dense_q.reshape(-1, 64).abs().amax(1, keepdim=True)
    assert ((q_deq - dense_q).reshape(-1, 64).abs() <= block_absmax * 0.1386 + 0.01).all(), "dequantization off"
    out["q_proj_dequantized"] = q_deq
    out["base_logits"] = logits_of(model, tokens)
    for key, adapter in [("lora_logits", "lora"), ("dora_logits", "dora_rslora")]:
        model, _ = load_4bit(base_dir, double_quant=True)
        peft_model = PeftModel.from_pretrained(model, os.path.join(args.fixtures, adapter)).eval()
        out[key] = logits_of(peft_model, tokens)
    model, _ = load_4bit(base_dir, double_quant=False)
    out["plain_base_logits"] = logits_of(model, tokens)

    dora_expected = load_file(os.path.join(args.fixtures, "dora_rslora", "expected.safetensors"))
    print("max |q_proj dequantized - dense|", (q_deq - dense_q).abs().max().item(),
          "(max |W|", dense_q.abs().max().item(), ")")
    print("max |dense base logits|", dense_logits.abs().max().item())
    print("max |base_logits - dense base|", (out["base_logits"] - dense_logits).abs().max().item())
    print("max |plain_base_logits - dense base|", (out["plain_base_logits"] - dense_logits).abs().max().item())
    print("max |base_logits - plain_base_logits|", (out["base_logits"] - out["plain_base_logits"]).abs().max().item())
    print("max |lora_logits - dense lora|", (out["lora_logits"] - lora_expected["logits"]).abs().max().item())
    print("max |dora_logits - dense dora|", (out["dora_logits"] - dora_expected["logits"]).abs().max().item())
    print("max |lora_logits - base_logits|", (out["lora_logits"] - out["base_logits"]).abs().max().item())

    path = os.path.join(args.fixtures, "qlora_expected.safetensors")
    save_file(out, path, metadata={"format": "pt"})
    for k, v in out.items():
        print(k, list(v.shape), v.dtype)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
