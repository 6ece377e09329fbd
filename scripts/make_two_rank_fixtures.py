#!/usr/bin/env python3
"""Two-rank ORPO and KTO parity fixtures: what TRL 1.16 logs at step 1 when its trainers run data-parallel on two
processes (torch.distributed's gloo backend on the CPU, as `accelerate launch` or `torchrun` start them).

ORPO's NLL and KTO's KL estimate are per-device figures in TRL (the NLL a token mean over one device's micro-batch;
the KL a mean over one device's mismatched pairs, then averaged over devices), so a two-rank run is compared with
TRL's own two-rank run, not with one process.

Needs `pip install torch transformers trl==1.16.0 datasets` (CPU is enough) and the DPO fixtures already committed
(`dpo_tokenizer/`, `dpo_policy/`, `dpo_reference/`, read and never rewritten). Run from the repository root:

    torchrun --nproc_per_node 2 scripts/make_two_rank_fixtures.py   # writes crates/trl/tests/fixtures/two_ranks.json

Each case is one optimizer step at learning rate 0 in float32, rows in order (sequential sampler): with
per-device batch b, rank 0 reads rows [0, b) and rank 1 rows [b, 2b) (Accelerate's batch sharding); under
accumulation the next micro-batches follow the same way. Rank 0 writes the first log record, which TRL has already
averaged over both processes.
"""
import json
import tempfile
import warnings

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForCausalLM
from trl import KTOConfig, KTOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

# The ORPO/KTO fixtures' script sits beside this one (Python puts a script's directory on its path).
from make_orpo_kto_fixtures import FIXTURES, ROWS as FIXTURE_ROWS

# Eight preference rows: the DPO fixture's four, then four more.
ROWS = FIXTURE_ROWS + [
    {"prompt": "up and", "chosen": " down", "rejected": " sideways then back around"},
    {"prompt": "north south", "chosen": " east west", "rejected": " up"},
    {"prompt": "x y", "chosen": " z", "rejected": " a b c"},
    {"prompt": "seven eight nine ten", "chosen": " eleven", "rejected": " three two"},
]
# Unpaired, then ordered so that every device batch and micro-batch mixes desirable (True) and undesirable rows in
# unequal numbers: TRL's figures are per-micro-batch ratios over both devices, averaged over the micro-batches,
# which differs from one ratio over the whole step only when the counts vary.
UNPAIRED = ([{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in ROWS]
            + [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in ROWS])
KTO_ORDER = [0, 1, 2, 8, 9, 10, 11, 12, 3, 4, 5, 6, 7, 13, 14, 15]  # T T T F F F F F | T T T T T F F F
KTO_ROWS = [UNPAIRED[i] for i in KTO_ORDER]

# batch: per device; accum: micro-batches per step. Every case reads each row once.
ORPO_CASES = [
    {"name": "orpo_batch4", "beta": 0.1, "batch": 4, "accum": 1},
    {"name": "orpo_batch2_accum2", "beta": 0.5, "batch": 2, "accum": 2},
]
KTO_CASES = [
    {"name": "kto_batch8", "loss_type": "kto", "desirable_weight": 1.0, "undesirable_weight": 1.0, "batch": 8,
     "accum": 1},
    {"name": "kto_weighted_batch4_accum2", "loss_type": "kto", "desirable_weight": 1.5, "undesirable_weight": 0.7,
     "batch": 4, "accum": 2},
]


def load(name):
    return LlamaForCausalLM.from_pretrained(FIXTURES / name, dtype=torch.float32).eval()


def common_args(out, case):
    return dict(output_dir=out, learning_rate=0.0, max_steps=1, per_device_train_batch_size=case["batch"],
                gradient_accumulation_steps=case["accum"], logging_steps=1, report_to=[], save_strategy="no",
                use_cpu=True, seed=0, bf16=False, fp16=False, train_sampling_strategy="sequential")


def orpo_case(case, out):
    tok = AutoTokenizer.from_pretrained(FIXTURES / "dpo_tokenizer")
    args = ORPOConfig(beta=case["beta"], **common_args(out, case))
    trainer = ORPOTrainer(model=load("dpo_policy"), args=args, train_dataset=Dataset.from_list(ROWS),
                          processing_class=tok)
    trainer.train()
    return {**case, "log": dict(trainer.state.log_history[0])}


def kto_case(case, out):
    tok = AutoTokenizer.from_pretrained(FIXTURES / "dpo_tokenizer")
    args = KTOConfig(loss_type=case["loss_type"], beta=0.1, desirable_weight=case["desirable_weight"],
                     undesirable_weight=case["undesirable_weight"], **common_args(out, case))
    trainer = KTOTrainer(model=load("dpo_policy"), ref_model=load("dpo_reference"), args=args,
                         train_dataset=Dataset.from_list(KTO_ROWS), processing_class=tok)
    trainer.train()
    return {**case, "log": dict(trainer.state.log_history[0])}


def main():
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    with tempfile.TemporaryDirectory() as out:
        orpo = [orpo_case(case, out) for case in ORPO_CASES]
        kto = [kto_case(case, out) for case in KTO_CASES]
    world = dist.get_world_size() if dist.is_initialized() else 1
    assert world == 2, f"run under `torchrun --nproc_per_node 2` (world size {world})"
    if dist.get_rank() == 0:
        fixture = {"ranks": world, "rows": ROWS, "kto_rows": KTO_ROWS, "orpo": orpo, "kto": kto}
        path = FIXTURES / "two_ranks.json"
        path.write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
