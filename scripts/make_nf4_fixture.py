"""Writes crates/memopt/tests/fixtures/nf4.safetensors: inputs and bitsandbytes' own NF4 results for them.

Needs `pip install torch bitsandbytes safetensors numpy` (CPU is enough). Every tensor llmtrain must reproduce
byte for byte comes from bitsandbytes.functional on the CPU:
  quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=False) -> packed codes, f32 absmax
  quantize_4bit(..., compress_statistics=True) -> packed codes, 8-bit absmax codes, offset, and the second
      level's f32 absmax (blocks of 256) and dynamic code (256 values)
  dequantize_4bit(...) for both -> the weights a QLoRA layer computes with
Case names say what each input tests; `<case>.input` is the f32 input.
"""
import sys

import bitsandbytes
import bitsandbytes.functional as F
import numpy as np
import torch
from safetensors.numpy import save_file


def cases():
    rng = np.random.RandomState(20261125)
    out = {}
    # A weight matrix: normal, like a trained linear layer (4096 values: 64 blocks, 16 double-quant absmax blocks
    # of 256 would need 16384; use 64 x 300 = 19200 to span two absmax blocks with a short last one).
    out["normal"] = (rng.randn(64, 300) * 0.02).astype(np.float32)
    # Heavy tails and exact multiples of codes (ties between codes land on midpoints).
    code = np.array(F.get_4bit_type("nf4", device="cpu").tolist(), dtype=np.float32)
    ties = np.concatenate([code, (code[1:] + code[:-1]) / 2, -code, np.zeros(64 - 31 + 16, np.float32)])
    out["codes_and_midpoints"] = ties.astype(np.float32)[: (ties.size // 64) * 64]
    out["student_t"] = (rng.standard_t(3, size=(40, 64)) * 0.1).astype(np.float32)
    # A length that is not a multiple of the block, an all-zero block, and a block with one huge value.
    tail = (rng.randn(64 * 5 + 37)).astype(np.float32)
    tail[64:128] = 0.0
    tail[200] = 1e4
    out["tail_zero_block_outlier"] = tail
    return out


def main(path):
    tensors = {}
    for name, array in cases().items():
        a = torch.from_numpy(np.ascontiguousarray(array))
        tensors[f"{name}.input"] = array.reshape(-1)
        packed, state = F.quantize_4bit(a, blocksize=64, quant_type="nf4", compress_statistics=False)
        tensors[f"{name}.packed"] = packed.reshape(-1).numpy()
        tensors[f"{name}.absmax"] = state.absmax.numpy()
        tensors[f"{name}.dequantized"] = F.dequantize_4bit(packed, state).reshape(-1).numpy()
        packed2, state2 = F.quantize_4bit(a, blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.equal(packed, packed2)
        tensors[f"{name}.dq.absmax_codes"] = state2.absmax.numpy()
        tensors[f"{name}.dq.offset"] = np.array([state2.offset.item()], dtype=np.float32)
        tensors[f"{name}.dq.absmax_absmax"] = state2.state2.absmax.numpy()
        tensors[f"{name}.dq.dequantized"] = F.dequantize_4bit(packed2, state2).reshape(-1).numpy()
    tensors["dynamic_code"] = F.create_dynamic_map().numpy()
    tensors["nf4_code"] = np.array(F.get_4bit_type("nf4", device="cpu").tolist(), dtype=np.float32)
    meta = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "device": "cpu"}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=meta)
    print(f"wrote {path} ({len(tensors)} tensors) with {meta}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "crates/memopt/tests/fixtures/nf4.safetensors")
