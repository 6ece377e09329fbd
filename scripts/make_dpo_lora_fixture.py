#!/usr/bin/env python3
"""DPO + LoRA parity fixture: what TRL 1.16's DPOTrainer logs at step 1 when the policy is `dpo_policy` with a
PEFT LoRA adapter and no separate reference model.

Needs `pip install torch transformers trl==1.16.0 datasets peft` (CPU is enough) and the committed outputs of
`make_dpo_fixture.py` (`dpo_policy/`, `dpo_tokenizer/`, `dpo_losses.json`), which it reads and never rewrites. Run
from the repository root, e.g. with a virtual environment holding those packages:

    /tmp/trlvenv/bin/python scripts/make_dpo_lora_fixture.py

It writes, under crates/trl/tests/fixtures/:

- `dpo_lora_adapter/`: a PEFT LoRA adapter for `dpo_policy` (r=4, lora_alpha=8, lora_dropout=0, on q/k/v/o and
  gate/up/down projections), saved with `save_pretrained` (adapter_config.json + adapter_model.safetensors; PEFT's
  generated README.md is removed). PEFT starts lora_B at zero (a no-op adapter); here every lora_A and lora_B weight
  is redrawn instead: after `torch.manual_seed(7)`, one `torch.randn(shape) * 0.3` per LoRA weight, in the
  PeftModel's `named_parameters()` order.
- `dpo_lora.json`: DPOTrainer (sigmoid loss, beta 0.1, the four rows of `dpo_losses.json` in one batch, one step at
  learning rate 0, `ref_model=None`) over two set-ups:
  - top-level `log` / `inputs` / `tokenized` / `batch_order`: the base model is passed with
    `peft_config=LoraConfig(...)`, and the adapter TRL creates is then given the weights above. This is TRL's
    "new adapter" path: the reference log-probs come from the same model with the adapter disabled (the base
    model), so the adapter moves the policy away from the reference and the loss is not ln 2.
  - `pretrained_adapter`: the saved adapter loaded with `PeftModel.from_pretrained` and passed as `model`. TRL 1.16
    (with peft >= 0.20) then adds a frozen "ref" adapter that copies the "default" one and scores the reference
    with it, so at step 1 the reference equals the policy and the loss is ln 2.
  `inputs` are the per-sequence sums of completion log-probs of the policy and the reference (seen through a
  forward hook on the PeftModel: the trainer's first call is the policy, the second the reference), with the
  completion lengths, put back in dataset row order (`batch_order` says how the sampler shuffled the rows).

Every config passes bf16=False: TRL's configs default to bf16 autocast even on the CPU.
"""
import json
import math
import pathlib
import tempfile

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

FIXTURES = pathlib.Path("crates/trl/tests/fixtures")
POLICY_DIR = FIXTURES / "dpo_policy"
TOKENIZER_DIR = FIXTURES / "dpo_tokenizer"
ADAPTER_DIR = FIXTURES / "dpo_lora_adapter"
OUT = FIXTURES / "dpo_lora.json"

R = 4
ALPHA = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INIT_SEED = 7
INIT_STD = 0.3
ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def lora_config():
    return LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")


def base_model():
    return AutoModelForCausalLM.from_pretrained(POLICY_DIR, dtype=torch.float32)


def randomize_adapter(peft_model):
    """Redraws every LoRA weight of the "default" adapter so that the adapter changes the model."""
    torch.manual_seed(INIT_SEED)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_A.default." in name or ".lora_B.default." in name:
                param.copy_(torch.randn(param.shape) * INIT_STD)


def adapter_state(peft_model, adapter):
    return {name: param.detach().clone() for name, param in peft_model.named_parameters()
            if f".{adapter}." in name and "lora_" in name}


def unpadded(input_ids, attention_mask):
    return [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())]


def batch_order(sequences, expected):
    return [expected.index(seq) for seq in sequences]


def to_row_order(values, order):
    out = [None] * len(order)
    for value, row in zip(values, order):
        out[row] = value
    return out


def record_logps(net, seen):
    """Per-sequence sums of completion log-probs (as DPOTrainer's loss takes them), completion lengths and the
    unpadded sequences they came from."""

    def hook(_module, _args, kwargs, output):
        shifted = kwargs["labels"][:, 1:]
        per_token = output.log_probs[:, -shifted.size(1):].detach()
        seen.append((per_token.sum(1).tolist(), (shifted != -100).sum(1).float().tolist(),
                     unpadded(kwargs["input_ids"], kwargs["attention_mask"])))

    return net.register_forward_hook(hook, with_kwargs=True)


def run(rows, make_trainer):
    """Builds a trainer with `make_trainer(args)`, runs one step and returns what it logged and computed."""
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, learning_rate=0.0, max_steps=1, per_device_train_batch_size=len(rows),
                         logging_steps=1, beta=0.1, loss_type=["sigmoid"], report_to=[], save_strategy="no",
                         use_cpu=True, seed=0, bf16=False)
        trainer = make_trainer(args)
        seen = []
        record_logps(trainer.model, seen)
        trainer.train()
        logged = dict(trainer.state.log_history[0])
        tokenized = [{key: row[key] for key in ID_COLUMNS} for row in trainer.train_dataset]
    # The first forward is the policy's, the second the reference's (same model, adapter switched).
    (logps, lengths, sequences), (ref_logps, _, ref_sequences) = seen[0], seen[1]
    assert sequences == ref_sequences
    half = len(rows)
    order = batch_order(sequences[:half], [row["prompt_ids"] + row["chosen_ids"] for row in tokenized])
    assert order == batch_order(sequences[half:], [row["prompt_ids"] + row["rejected_ids"] for row in tokenized])
    inputs = {
        "chosen_logps": to_row_order(logps[:half], order), "rejected_logps": to_row_order(logps[half:], order),
        "ref_chosen_logps": to_row_order(ref_logps[:half], order),
        "ref_rejected_logps": to_row_order(ref_logps[half:], order),
        "chosen_tokens": to_row_order(lengths[:half], order), "rejected_tokens": to_row_order(lengths[half:], order),
    }
    return trainer, {"tokenized": tokenized, "batch_order": order, "inputs": inputs, "log": logged}


def main():
    rows = json.loads((FIXTURES / "dpo_losses.json").read_text())["rows"]
    dataset = Dataset.from_list(rows)

    # The adapter, saved on its own.
    peft_model = get_peft_model(base_model(), lora_config())
    randomize_adapter(peft_model)
    weights = adapter_state(peft_model, "default")
    peft_model.save_pretrained(ADAPTER_DIR)
    (ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # PEFT's generated model card: not needed
    print(f"wrote {ADAPTER_DIR}")

    # New-adapter path: base model + peft_config; reference = adapter disabled.
    def new_adapter(args):
        trainer = DPOTrainer(model=base_model(), ref_model=None, args=args, train_dataset=dataset,
                             processing_class=AutoTokenizer.from_pretrained(TOKENIZER_DIR), peft_config=lora_config())
        randomize_adapter(trainer.model)
        got = adapter_state(trainer.model, "default")
        assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in got)
        assert "ref" not in trainer.model.peft_config
        return trainer

    _, main_case = run(rows, new_adapter)

    # Pretrained-adapter path: PeftModel as `model`; TRL copies the adapter into a frozen "ref" adapter.
    def pretrained_adapter(args):
        model = PeftModel.from_pretrained(base_model(), ADAPTER_DIR, is_trainable=True)
        return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(TOKENIZER_DIR))

    trainer, pretrained_case = run(rows, pretrained_adapter)
    assert "ref" in trainer.model.peft_config
    assert main_case["tokenized"] == pretrained_case["tokenized"]
    # The same adapter gives the same policy log-probs on both paths.
    for key in ("chosen_logps", "rejected_logps"):
        assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-4)
                   for a, b in zip(main_case["inputs"][key], pretrained_case["inputs"][key]))

    fixture = {
        "beta": 0.1, "loss_type": ["sigmoid"], "rows": rows,
        "adapter": {"r": R, "alpha": ALPHA, "dropout": 0.0, "targets": TARGETS, "init_seed": INIT_SEED,
                    "init_std": INIT_STD},
        "tokenized": main_case["tokenized"], "batch_order": main_case["batch_order"],
        "inputs": main_case["inputs"], "log": main_case["log"],
        "pretrained_adapter": {"batch_order": pretrained_case["batch_order"], "inputs": pretrained_case["inputs"],
                               "log": pretrained_case["log"]},
    }
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")
    print("log:", json.dumps(main_case["log"]))
    print("pretrained_adapter log:", json.dumps(pretrained_case["log"]))


if __name__ == "__main__":
    main()
