#!/usr/bin/env python3
"""GRPO and RLOO parity fixtures: the loss and metrics TRL 1.16's GRPOTrainer._compute_loss and
RLOOTrainer._compute_loss return for one fixed batch of rollouts, with the per-token log-probs behind them.

Needs `pip install torch transformers trl==1.16.0 datasets` (CPU is enough) and the DPO fixtures already committed
(`dpo_tokenizer/`, `dpo_policy/`, `dpo_reference/`, made by scripts/make_dpo_fixture.py; read, never rewritten).
Run from the repository root:

    python3 scripts/make_online_fixtures.py   # writes crates/trl/tests/fixtures/online.json

The batch: four prompts of different lengths (left-padded with the pad token, as TRL's generation leaves them) and
four completions (right-padded; two end with the EOS token, two were cut at max_completion_length), advantages of
both signs, "old" log-probs (the policy's own, moved by fixed offsets so that some ratios leave the clip range in
each direction) and the reference's log-probs (dpo_reference). Each case builds a trainer on a fresh copy of the
policy in float32 and calls `_compute_loss` once in training mode with one accumulation step and one process, so the
loss is exactly the step's loss. Recorded: the inputs as token lists, the case's settings, the loss, the metrics the
call appended, and TRL's per-token log-probs of the completions (at the case's temperature).
"""
import json
import pathlib
import tempfile
import warnings

import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForCausalLM
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.trainer import add_fused_lm_head

warnings.filterwarnings("ignore")
FIXTURES = pathlib.Path("crates/trl/tests/fixtures")
PROMPTS = ["the cat sat on", "one two", "red green blue and", "a"]
COMPLETIONS = [" the mat</s>", " three four five six", " yellow</s>", " b c d e f"]
ADVANTAGES = [0.9, -1.2, 0.4, -0.3]
# Added to the policy's per-token log-probs to make the "old" ones: ratios exp(-offset) above and below the range.
OFFSETS = [[-0.5, 0.1, 0.0, 0.3, -0.05], [0.4, -0.3, 0.02, 0.25, -0.6], [0.0, -0.4, 0.35], [0.3, -0.25, 0.1, 0.5, -0.1]]
MAX_COMPLETION_LENGTH = 5

GRPO_CASES = [
    {"name": "dapo", "loss_type": "dapo", "beta": 0.0, "epsilon": 0.2, "epsilon_high": None, "temperature": 1.0},
    {"name": "dapo_beta_asym", "loss_type": "dapo", "beta": 0.04, "epsilon": 0.2, "epsilon_high": 0.28,
     "temperature": 0.7},
    {"name": "grpo", "loss_type": "grpo", "beta": 0.04, "epsilon": 0.2, "epsilon_high": None, "temperature": 1.0},
    {"name": "grpo_plain_kl", "loss_type": "grpo", "beta": 0.1, "epsilon": 0.2, "epsilon_high": None,
     "temperature": 1.0, "use_bias_correction_kl": False},
    {"name": "dr_grpo", "loss_type": "dr_grpo", "beta": 0.0, "epsilon": 0.1, "epsilon_high": 0.3,
     "temperature": 0.9},
]
RLOO_CASES = [
    {"name": "rloo", "epsilon": 0.2, "epsilon_high": None, "temperature": 1.0},
    {"name": "rloo_asym", "epsilon": 0.1, "epsilon_high": 0.3, "temperature": 0.8},
]


def load(name):
    return LlamaForCausalLM.from_pretrained(FIXTURES / name, dtype=torch.float32)


def batch(tok):
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    completions = [tok(c, add_special_tokens=False)["input_ids"][:MAX_COMPLETION_LENGTH] for c in COMPLETIONS]
    pad = tok.pad_token_id
    plen, clen = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.tensor([[pad] * (plen - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (plen - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [pad] * (clen - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (clen - len(c)) for c in completions])
    return prompts, completions, prompt_ids, prompt_mask, completion_ids, completion_mask


def common(out, case):
    return dict(output_dir=out, learning_rate=0.0, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=MAX_COMPLETION_LENGTH, temperature=case["temperature"],
                epsilon=case["epsilon"], epsilon_high=case["epsilon_high"], report_to=[], save_strategy="no",
                use_cpu=True, seed=0, bf16=False, fp16=False)


def run(trainer_class, config, case, tok, extra_inputs):
    prompts, completions, prompt_ids, prompt_mask, completion_ids, completion_mask = batch(tok)
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    trainer = trainer_class(model=load("dpo_policy"), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                            args=config, train_dataset=dataset, processing_class=tok)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention,
                                                                 completion_ids.size(1))
        ref = load("dpo_reference").eval()
        add_fused_lm_head(ref, temperature=case["temperature"], outputs=("log_probs", "entropy"))
        ref_logps, _, _ = trainer._get_per_token_logps_and_entropies(ref, input_ids, attention,
                                                                     completion_ids.size(1))
    offsets = torch.tensor([o + [0.0] * (completion_ids.size(1) - len(o)) for o in OFFSETS])
    old = (logps + offsets) * completion_mask
    inputs = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                  completion_mask=completion_mask, advantages=torch.tensor(ADVANTAGES))
    inputs.update(extra_inputs(old, ref_logps * completion_mask, completion_mask))
    trainer._metrics["train"].clear()
    loss = trainer._compute_loss(trainer.model, inputs)
    rows = lambda t: [row[:len(c)] for row, c in zip(t.tolist(), completions)]
    return dict(case, prompts=prompts, completions=completions, advantages=ADVANTAGES,
                max_completion_length=MAX_COMPLETION_LENGTH, loss=loss.item(),
                metrics={k: v[-1] for k, v in trainer._metrics["train"].items()},
                per_token_logps=rows(logps), old_per_token_logps=rows(old), ref_per_token_logps=rows(ref_logps))


def main():
    tok = AutoTokenizer.from_pretrained(FIXTURES / "dpo_tokenizer")
    cases = []
    with tempfile.TemporaryDirectory() as out:
        for case in GRPO_CASES:
            case = {"use_bias_correction_kl": True, **case}
            config = GRPOConfig(**common(out, case), beta=case["beta"], loss_type=case["loss_type"],
                                use_bias_correction_kl=case["use_bias_correction_kl"])
            extra = lambda old, ref, mask: dict(old_per_token_logps=old, ref_per_token_logps=ref,
                                                num_items_in_batch=mask.sum())
            cases.append(dict(run(GRPOTrainer, config, case, tok, extra), trainer="grpo"))
        for case in RLOO_CASES:
            config = RLOOConfig(**common(out, case), beta=0.0)
            extra = lambda old, ref, mask: dict(old_logps=(old * mask).sum(1))
            cases.append(dict(run(RLOOTrainer, config, case, tok, extra), trainer="rloo"))
    path = FIXTURES / "online.json"
    path.write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
