#!/usr/bin/env python3
"""SFT parity fixture: what TRL 1.16's SFTTrainer logs at step 1, with the token ids and labels its dataset
preparation gave each row.

Needs `pip install torch transformers trl==1.16.0 datasets` (CPU is enough). Run from the repository root with the
venv that has them:

    /tmp/trlvenv/bin/python scripts/make_sft_fixture.py    # writes crates/trl/tests/fixtures/sft.json

The DPO fixture's policy (`dpo_policy/`) and tokenizer (`dpo_tokenizer/`, byte-level BPE, EOS "</s>", pad "<pad>",
no BOS) are reused unchanged. Three cases, each one SFTTrainer step at learning rate 0 over all the rows in a single
batch, in dataset order (sequential sampler, no dataset shuffle), in float32 (bf16 off):

- "text": language-modeling rows {"text"}; every token is scored.
- "prompt_completion": the DPO rows' prompt and chosen completion, with the default completion-only loss.
- "prompt_completion_all": the same rows with `completion_only_loss=False`.

For each case the fixture keeps the rows, the prepared dataset (per row `input_ids` and `labels`, unpadded, in dataset
order, as the collator receives them), the batch order (dataset index of each batch row), the padded batch the loss
saw, `num_items_in_batch`, per-row sums of what the fused LM head returned (next-token log-probs, entropies, top-1 hits
and the count of scored positions), and the first log record with every key.
"""
import json
import pathlib
import tempfile

import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

FIXTURES = pathlib.Path("crates/trl/tests/fixtures")
OUT = FIXTURES / "sft.json"
DPO_ROWS = json.loads((FIXTURES / "dpo_losses.json").read_text())["rows"]
TEXT_ROWS = [
    {"text": "the dog sat on a mat"},
    {"text": "five four three two one"},
    # The policy's greedy continuation of "blue green red" is "(" repeated, so some positions are top-1 hits and
    # mean_token_accuracy is not 0.
    {"text": "blue green red(((("},
    # Already ends with the EOS text: TRL does not append a second one.
    {"text": "a b c d e f g</s>"},
]
PC_ROWS = [{"prompt": row["prompt"], "completion": row["chosen"]} for row in DPO_ROWS]
CASES = [
    ("text", TEXT_ROWS, None),
    ("prompt_completion", PC_ROWS, None),
    ("prompt_completion_all", PC_ROWS, False),
]


def record(trainer, seen):
    """Wraps the trainer's own `compute_loss` to keep the batch it was given and `num_items_in_batch`, and hooks the
    model's forward to keep per-row sums of the fused LM head's per-token outputs."""
    compute_loss = trainer.compute_loss

    def wrapped(model, inputs, return_outputs=False, num_items_in_batch=None):
        seen["batch"] = {key: inputs[key].tolist() for key in ("input_ids", "attention_mask", "labels")}
        seen["num_items_in_batch"] = None if num_items_in_batch is None else float(num_items_in_batch)
        return compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    trainer.compute_loss = wrapped

    def hook(_module, _args, kwargs, output):
        if kwargs.get("fused_lm_head"):
            seen["per_row"] = {
                "logp_sum": output.log_probs.detach().sum(1).tolist(),
                "entropy_sum": output.entropy.detach().sum(1).tolist(),
                "top1_count": output.is_top1.detach().float().sum(1).tolist(),
                "scored_count": output.label_mask.sum(1).tolist(),
            }

    return trainer.model.register_forward_hook(hook, with_kwargs=True)


def run_case(rows, completion_only_loss):
    tok = AutoTokenizer.from_pretrained(FIXTURES / "dpo_tokenizer")
    model = LlamaForCausalLM.from_pretrained(FIXTURES / "dpo_policy", dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        # TRL's configs default to bf16=True, which autocasts the forward to bf16 even on the CPU: f32 here.
        args = SFTConfig(output_dir=out, learning_rate=0.0, max_steps=1, per_device_train_batch_size=len(rows),
                         logging_steps=1, packing=False, report_to="none", save_strategy="no", use_cpu=True, seed=0,
                         bf16=False, completion_only_loss=completion_only_loss, shuffle_dataset=False,
                         train_sampling_strategy="sequential", dataloader_drop_last=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        seen = {}
        record(trainer, seen)
        trainer.train()
        logged = dict(trainer.state.log_history[0])
        prepared = [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in trainer.train_dataset]
    # Dataset index of each batch row, by matching its unpadded ids.
    order = []
    for ids, mask in zip(seen["batch"]["input_ids"], seen["batch"]["attention_mask"]):
        unpadded = [t for t, m in zip(ids, mask) if m]
        order.append(next(i for i, row in enumerate(prepared) if row["input_ids"] == unpadded and i not in order))
    return {
        "completion_only_loss": completion_only_loss,
        "max_length": args.max_length,
        "truncation_mode": args.truncation_mode,
        "rows": rows,
        "tokenized": prepared,
        "batch_order": order,
        "batch": seen["batch"],
        "num_items_in_batch": seen["num_items_in_batch"],
        "per_row": seen["per_row"],
        "log": logged,
    }


def main():
    tok = AutoTokenizer.from_pretrained(FIXTURES / "dpo_tokenizer")
    fixture = {
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "notes": "EOS is appended as the text '</s>' to `text` / `completion` unless it already ends with it (no BOS: "
                 "the tokenizer has none). prompt and prompt+completion are each tokenized whole; the completion "
                 "starts at their common prefix length. labels are input_ids with -100 where not scored; the model "
                 "scores labels[1:] (next-token), padding is right with pad_token_id / -100.",
        "cases": {},
    }
    for name, rows, completion_only_loss in CASES:
        fixture["cases"][name] = run_case(rows, completion_only_loss)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
