#!/usr/bin/env python3
"""ORPO and KTO parity fixtures: what TRL 1.16's ORPOTrainer (trl.experimental.orpo) and KTOTrainer (trl.KTOTrainer,
re-exported as trl.experimental.kto) log at step 1, with the token ids and per-sequence log-probs behind each value.

Needs `pip install torch transformers trl==1.16.0 datasets` (CPU is enough) and the DPO fixtures already committed
(`dpo_tokenizer/`, `dpo_policy/`, `dpo_reference/`, made by scripts/make_dpo_fixture.py; they are read, never
rewritten). Run from the repository root:

    python3 scripts/make_orpo_kto_fixtures.py   # writes crates/trl/tests/fixtures/orpo.json and kto.json

Every case builds a fresh trainer on fresh copies of the tiny Llama models (the trainers patch the models they are
given), in float32 (`bf16=False`: TRL's configs otherwise autocast to bf16 even on the CPU), runs one optimizer step at
learning rate 0, and keeps the first log record whole. The batch covers every row, in row order (sequential sampler).

ORPO: the four preference rows of the DPO fixture, beta 0.1 and 0.5, plus a case where the tokenizer is given a BOS
token (the EOS, as GPT-2 style tokenizers have) so that ORPO's BOS prepending shows. Recorded per row: the ids ORPO's
`tokenize_row` produced (prompt, chosen, rejected, with the -100 label masks), and what `concatenated_forward`
returned to the loss: the length-averaged completion log-probs of chosen and rejected and the chosen NLL.

KTO: the same rows unpaired the way TRL's `unpair_preference_dataset` orders them (the four chosen completions labelled
True, then the four rejected labelled False). Cases: loss "kto" with weights 1/1 and 1.5/0.7, "apo_zero_unpaired", and
"kto" at per-device batch 4 with 2 accumulation steps (the KL completions then rotate within each half). Recorded per
row: the prompt/completion ids and the KL completion ids, and for every forward the trainer ran (policy and
reference, matched and KL sequences) the input ids, the scored positions and the per-sequence sum of log-probs.
"""
import json
import pathlib
import tempfile
import warnings

import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForCausalLM
from trl import KTOConfig, KTOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

FIXTURES = pathlib.Path("crates/trl/tests/fixtures")
ROWS = [
    {"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a dog barks loudly"},
    {"prompt": "one two three", "chosen": " four five", "rejected": " seven"},
    # The prompt ends inside a word: its last token merges with the completion's first.
    {"prompt": "red gr", "chosen": "een blue", "rejected": "ey green red"},
    {"prompt": "a b c d", "chosen": " e f g</s>", "rejected": " z y"},
]
# Unpaired as TRL's unpair_preference_dataset does it: all chosen (True), then all rejected (False).
KTO_ROWS = ([{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in ROWS]
            + [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in ROWS])

ORPO_CASES = [
    {"name": "beta_0.1", "beta": 0.1, "bos_is_eos": False},
    {"name": "beta_0.5", "beta": 0.5, "bos_is_eos": False},
    {"name": "beta_0.1_bos", "beta": 0.1, "bos_is_eos": True},
]
KTO_CASES = [
    {"name": "kto", "loss_type": "kto", "desirable_weight": 1.0, "undesirable_weight": 1.0, "batch": 8, "accum": 1},
    {"name": "kto_weighted", "loss_type": "kto", "desirable_weight": 1.5, "undesirable_weight": 0.7, "batch": 8,
     "accum": 1},
    {"name": "apo_zero_unpaired", "loss_type": "apo_zero_unpaired", "desirable_weight": 1.0,
     "undesirable_weight": 1.0, "batch": 8, "accum": 1},
    {"name": "kto_batch4_accum2", "loss_type": "kto", "desirable_weight": 1.0, "undesirable_weight": 1.0, "batch": 4,
     "accum": 2},
]


def tokenizer(bos_is_eos=False):
    tok = AutoTokenizer.from_pretrained(FIXTURES / "dpo_tokenizer")
    if bos_is_eos:
        tok.bos_token = tok.eos_token
    return tok


def load(name):
    return LlamaForCausalLM.from_pretrained(FIXTURES / name, dtype=torch.float32).eval()


def common_args(out, batch, accum=1):
    # One optimizer step at learning rate 0, f32, rows in order, nothing saved or reported.
    return dict(output_dir=out, learning_rate=0.0, max_steps=1, per_device_train_batch_size=batch,
                gradient_accumulation_steps=accum, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                seed=0, bf16=False, fp16=False, train_sampling_strategy="sequential")


def floats(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


# ----------------------------------------------------------------------------------------------------------- ORPO
def orpo_case(case):
    tok = tokenizer(case["bos_is_eos"])
    policy = load("dpo_policy")
    with tempfile.TemporaryDirectory() as out:
        args = ORPOConfig(beta=case["beta"], **common_args(out, len(ROWS)))
        trainer = ORPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tok)
        seen = {}
        original_forward = trainer.concatenated_forward

        def concatenated_forward(model, batch):
            # What ORPO's loss is given: length-averaged completion log-probs and the chosen NLL.
            result = original_forward(model, batch)
            chosen_logps, rejected_logps, chosen_logits, rejected_logits, nll = result[:5]
            seen["chosen_logps"] = floats(chosen_logps)
            seen["rejected_logps"] = floats(rejected_logps)
            seen["nll_loss"] = float(nll)
            seen["padded_width"] = int(chosen_logits.shape[1] + 1)
            seen["batch_chosen_input_ids"] = batch["chosen_input_ids"].tolist()
            seen["batch_rejected_input_ids"] = batch["rejected_input_ids"].tolist()
            return result

        trainer.concatenated_forward = concatenated_forward

        def hook(_module, args_, kwargs, output):
            # Derived aids, recomputed from the same logits: per-sequence sums of completion log-probs and of
            # full-sequence log-probs (the NLL's targets), with their token counts.
            ids = args_[0] if args_ else kwargs["input_ids"]
            mask = kwargs["attention_mask"]
            logps = torch.log_softmax(output.logits.detach().float(), -1)[:, :-1]
            target = logps.gather(-1, ids[:, 1:, None]).squeeze(-1)
            seen["full_mask"] = mask[:, 1:]
            seen["full_target"] = target

        policy.register_forward_hook(hook, with_kwargs=True)
        trainer.train()
        logged = dict(trainer.state.log_history[0])
        data = trainer.train_dataset

    tokenized = []
    for row in data:
        tokenized.append({
            "prompt_ids": row["prompt_input_ids"],
            "chosen_input_ids": row["chosen_input_ids"],
            "chosen_labels": row["chosen_labels"],
            "rejected_input_ids": row["rejected_input_ids"],
            "rejected_labels": row["rejected_labels"],
        })
    n = len(ROWS)
    # The batch reached the model in row order (sequential sampler).
    for i, row in enumerate(tokenized):
        width_c = len(row["chosen_input_ids"])
        width_r = len(row["rejected_input_ids"])
        assert seen["batch_chosen_input_ids"][i][:width_c] == row["chosen_input_ids"]
        assert seen["batch_rejected_input_ids"][i][:width_r] == row["rejected_input_ids"]
    full_mask, full_target = seen["full_mask"].float(), seen["full_target"]
    full_sum = (full_target * full_mask).sum(1)
    completion_tokens = [sum(1 for x in row[key][1:] if x != -100) for key in ("chosen_labels", "rejected_labels")
                         for row in tokenized]
    inputs = {
        "chosen_logps": seen["chosen_logps"],
        "rejected_logps": seen["rejected_logps"],
        "nll_loss": seen["nll_loss"],
        "chosen_tokens": completion_tokens[:n],
        "rejected_tokens": completion_tokens[n:],
        "chosen_full_logps_sum": floats(full_sum[:n]),
        "chosen_full_tokens": floats(full_mask.sum(1)[:n]),
        "padded_width": seen["padded_width"],
    }
    return {"name": case["name"], "beta": case["beta"], "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "tokenized": tokenized,
            "inputs": inputs, "log": logged}


# ------------------------------------------------------------------------------------------------------------ KTO
def record_forwards(net, seen, who):
    """Records every fused forward KTOTrainer runs on `net`: its input ids, its scored (label != -100, shifted)
    positions and the per-sequence sum of log-probs over them."""

    def hook(_module, args_, kwargs, output):
        if not kwargs.get("fused_lm_head"):
            return
        ids = kwargs["input_ids"]
        labels = kwargs["labels"][:, 1:]
        per_token = output.log_probs[:, -labels.size(1):].detach()
        seen.append({"model": who, "input_ids": ids.tolist(), "scored": (labels != -100).int().tolist(),
                     "logps": floats(per_token.sum(1))})

    net.register_forward_hook(hook, with_kwargs=True)


def strip(ids, scored):
    """A padded row back to its real tokens: the row up to its last scored target (right padding only)."""
    last = max(i for i, s in enumerate(scored) if s) + 1
    return ids[:last + 1]


def kto_case(case):
    tok = tokenizer()
    policy, reference = load("dpo_policy"), load("dpo_reference")
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = KTOConfig(loss_type=case["loss_type"], beta=0.1, desirable_weight=case["desirable_weight"],
                         undesirable_weight=case["undesirable_weight"],
                         **common_args(out, case["batch"], case["accum"]))
        trainer = KTOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(KTO_ROWS),
                             processing_class=tok)
        seen = []
        record_forwards(policy, seen, "policy")
        record_forwards(reference, seen, "reference")
        trainer.train()
        logged = dict(trainer.state.log_history[0])
        data = trainer.train_dataset

    tokenized = []
    for i, row in enumerate(data):
        entry = {"prompt_ids": row["prompt_ids"], "completion_ids": row["completion_ids"], "label": row["label"]}
        if "KL_completion_ids" in row:
            entry["KL_completion_ids"] = row["KL_completion_ids"]
            # Which row's completion the KL pair borrowed: the previous row within its batch of
            # per_device_train_batch_size (the first row takes the batch's last).
            start = i - i % case["batch"]
            size = min(case["batch"], len(data) - start)
            entry["KL_completion_from_row"] = start + (i - start - 1) % size
            assert data[entry["KL_completion_from_row"]]["completion_ids"] == row["KL_completion_ids"]
        tokenized.append(entry)

    # Per row, the per-sequence log-prob sums of each forward (micro-batches in order; within each, the trainer runs
    # the policy on the KL sequences, the policy on the matched ones, then the reference on KL, then matched).
    per_row = [dict() for _ in tokenized]
    counters = {}
    for fwd in seen:
        counters.setdefault(fwd["model"], []).append(fwd)
    for who in ("policy", "reference"):
        fwds = counters[who]
        calc_kl = case["loss_type"] != "apo_zero_unpaired"
        per_micro = 2 if calc_kl else 1
        assert len(fwds) == per_micro * case["accum"]
        for micro in range(case["accum"]):
            group = fwds[micro * per_micro:(micro + 1) * per_micro]
            kinds = (["KL", "matched"] if calc_kl else ["matched"])
            for kind, fwd in zip(kinds, group):
                for j, (ids, scored, logp) in enumerate(zip(fwd["input_ids"], fwd["scored"], fwd["logps"])):
                    r = micro * case["batch"] + j
                    real = strip(ids, scored)
                    t = tokenized[r]
                    completion = t["completion_ids"] if kind == "matched" else t["KL_completion_ids"]
                    assert real == t["prompt_ids"] + completion, (who, kind, r)
                    assert sum(scored) == len(completion)
                    per_row[r][f"{who}_{kind}_logps"] = logp
    fields = ["policy_matched_logps", "reference_matched_logps"]
    if case["loss_type"] != "apo_zero_unpaired":
        fields += ["policy_KL_logps", "reference_KL_logps"]
    inputs = {f: [row[f] for row in per_row] for f in fields}
    inputs["completion_tokens"] = [len(t["completion_ids"]) for t in tokenized]
    if case["loss_type"] != "apo_zero_unpaired":
        # The KL estimate of each micro-batch: mean over its rows of policy_KL - reference_KL, clamped at 0.
        kls = []
        for micro in range(case["accum"]):
            rows = range(micro * case["batch"], (micro + 1) * case["batch"])
            diff = [per_row[r]["policy_KL_logps"] - per_row[r]["reference_KL_logps"] for r in rows]
            kls.append(max(0.0, sum(diff) / len(diff)))
        inputs["kl_per_micro_batch"] = kls
    return {**case, "beta": 0.1, "tokenized": tokenized, "inputs": inputs, "log": logged}


def main():
    torch.set_num_threads(1)
    orpo = {"rows": ROWS, "cases": [orpo_case(case) for case in ORPO_CASES]}
    kto = {"rows": KTO_ROWS, "cases": [kto_case(case) for case in KTO_CASES]}
    for name, fixture in (("orpo.json", orpo), ("kto.json", kto)):
        path = FIXTURES / name
        path.write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
