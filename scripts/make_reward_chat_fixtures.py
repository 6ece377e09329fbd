#!/usr/bin/env python3
"""Parity fixtures for TRL 1.16's RewardTrainer (with a LlamaForSequenceClassification) and for DPO on
conversational (chat-template) rows.

Needs the tools of `make_dpo_fixture.py` (`pip install torch transformers trl==1.16.0 datasets`, CPU is enough) and
its committed outputs (`dpo_tokenizer/`, `dpo_policy/`, `dpo_reference/`), which it reads and never rewrites. Run
from the repository root, e.g. with a virtual environment holding those packages:

    /tmp/trlvenv/bin/python scripts/make_reward_chat_fixtures.py

It writes, under crates/trl/tests/fixtures/:

- `reward_model/`: a tiny LlamaForSequenceClassification (num_labels=1). Its backbone is `dpo_policy`'s (loaded with
  `AutoModelForSequenceClassification.from_pretrained`, which drops `lm_head`), its `score` head is drawn here from
  a seeded generator (std 0.5, so rewards are far from zero), and `config.pad_token_id` is the tokenizer's pad id.
  The tokenizer files are saved alongside.
- `reward.json`: for each case (plain, with a `margin` column, with `center_rewards_coefficient=0.01`), RewardTrainer
  runs one step at learning rate 0 over all four rows in one batch; kept are the token ids its dataset preparation
  gave each row, the rewards the model returned for that batch (seen through a forward hook, put back in dataset
  row order: the trainer's sampler shuffles the rows, `batch_order` says how), the batch it was fed and the first
  log record. It also keeps transformers' logits for a right-padded batch of free texts, so the
  forward (the score read at the last non-pad token) can be checked on its own.
- `dpo_chat_tokenizer/`: `dpo_tokenizer` with a small chat template (stored in tokenizer_config.json).
- `dpo_chat.json`: DPOTrainer (sigmoid loss, beta 0.1, one step at learning rate 0) with `dpo_policy` and
  `dpo_reference` on three conversational rows: the ids its tokenization produced, the per-sequence completion
  log-probs of both models (in dataset row order, as above), and the first log record.

Every config passes bf16=False: TRL's configs default to bf16 autocast even on the CPU.
"""
import json
import pathlib
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

FIXTURES = pathlib.Path("crates/trl/tests/fixtures")
TOKENIZER_DIR = FIXTURES / "dpo_tokenizer"
POLICY_DIR = FIXTURES / "dpo_policy"
REFERENCE_DIR = FIXTURES / "dpo_reference"
REWARD_DIR = FIXTURES / "reward_model"
CHAT_TOKENIZER_DIR = FIXTURES / "dpo_chat_tokenizer"
REWARD_OUT = FIXTURES / "reward.json"
DPO_CHAT_OUT = FIXTURES / "dpo_chat.json"

# The four preference rows of make_dpo_fixture.py.
ROWS = [
    {"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a dog barks loudly"},
    {"prompt": "one two three", "chosen": " four five", "rejected": " seven"},
    {"prompt": "red gr", "chosen": "een blue", "rejected": "ey green red"},
    {"prompt": "a b c d", "chosen": " e f g</s>", "rejected": " z y"},
]
MARGINS = [0.5, 0.0, -0.25, 1.0]
REWARD_CASES = [
    {"name": "plain", "margin": None, "center_rewards_coefficient": None},
    {"name": "margin", "margin": MARGINS, "center_rewards_coefficient": None},
    {"name": "center_rewards", "margin": None, "center_rewards_coefficient": 0.01},
]
# Free texts for the forward check: the batch is right-padded with the pad token.
FORWARD_TEXTS = ["the cat sat on the mat", "seven", "one two three four five</s>"]
# The pad token inside a text: transformers reads the score at the rightmost token that is not the pad token, so a
# pad in the middle is passed over and a trailing pad is skipped (the score comes from the token before it).
FORWARD_EDGE_TEXTS = ["red <pad> green", "a b c<pad>", "z"]
SCORE_SEED = 1234
SCORE_STD = 0.5

# Each message renders as "<|role|>\n" + content + eos + "\n"; the generation prompt is "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
CHAT_ROWS = [
    {
        "prompt": [{"role": "user", "content": "the cat sat on"}],
        "chosen": [{"role": "assistant", "content": "the mat"}],
        "rejected": [{"role": "assistant", "content": "a dog barks loudly"}],
    },
    {
        "prompt": [{"role": "system", "content": "count on"}, {"role": "user", "content": "one two three"}],
        "chosen": [{"role": "assistant", "content": "four five"}],
        "rejected": [{"role": "assistant", "content": "seven"}],
    },
    {
        "prompt": [
            {"role": "user", "content": "red"},
            {"role": "assistant", "content": "green"},
            {"role": "user", "content": "a b c d"},
        ],
        "chosen": [{"role": "assistant", "content": "e f g"}],
        "rejected": [{"role": "assistant", "content": "z y"}],
    },
]
DPO_ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def build_reward_model(tok):
    """dpo_policy's backbone under a sequence-classification head with one label, the head drawn here."""
    model = AutoModelForSequenceClassification.from_pretrained(POLICY_DIR, num_labels=1, dtype=torch.float32)
    generator = torch.Generator().manual_seed(SCORE_SEED)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=generator) * SCORE_STD)
    model.config.pad_token_id = tok.pad_token_id
    return model.eval()


def unpadded(input_ids, attention_mask):
    return [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())]


def batch_order(sequences, expected):
    """The dataset row of each of the batch's pairs: the trainer's sampler shuffles the rows."""
    return [expected.index(seq) for seq in sequences]


def to_row_order(values, order):
    out = [None] * len(order)
    for value, row in zip(values, order):
        out[row] = value
    return out


def record_rewards(net, seen):
    """Records the batch and the pooled logits of every forward RewardTrainer runs on `net`."""

    def hook(_module, _args, kwargs, output):
        seen.append({
            "input_ids": kwargs["input_ids"].tolist(),
            "attention_mask": kwargs["attention_mask"].tolist(),
            "logits": output.logits.detach().squeeze(-1).tolist(),
        })

    return net.register_forward_hook(hook, with_kwargs=True)


def record_logps(net, seen):
    """Per-sequence sums of completion log-probs (as DPOTrainer's loss takes them), completion lengths and the
    unpadded sequences they came from."""

    def hook(_module, _args, kwargs, output):
        shifted = kwargs["labels"][:, 1:]
        per_token = output.log_probs[:, -shifted.size(1):].detach()
        seen.append((per_token.sum(1).tolist(), (shifted != -100).sum(1).float().tolist(),
                     unpadded(kwargs["input_ids"], kwargs["attention_mask"])))

    return net.register_forward_hook(hook, with_kwargs=True)


def reward_fixture(tok):
    cases = []
    tokenized = None
    for case in REWARD_CASES:
        rows = [dict(row) for row in ROWS]
        if case["margin"] is not None:
            for row, margin in zip(rows, case["margin"]):
                row["margin"] = margin
        with tempfile.TemporaryDirectory() as out:
            args = RewardConfig(output_dir=out, learning_rate=0.0, max_steps=1, per_device_train_batch_size=len(rows),
                                logging_steps=1, center_rewards_coefficient=case["center_rewards_coefficient"],
                                report_to=[], save_strategy="no", use_cpu=True, seed=0, bf16=False)
            model = AutoModelForSequenceClassification.from_pretrained(REWARD_DIR, dtype=torch.float32)
            trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                    processing_class=AutoTokenizer.from_pretrained(REWARD_DIR))
            seen = []
            record_rewards(model, seen)
            trainer.train()
            logged = dict(trainer.state.log_history[0])
            case_tokenized = [{key: row[key] for key in ("chosen_ids", "rejected_ids")}
                              for row in trainer.train_dataset]
        if tokenized is None:
            tokenized = case_tokenized
        assert case_tokenized == tokenized
        batch = seen[0]
        half = len(rows)
        sequences = unpadded(torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"]))
        order = batch_order(sequences[:half], [row["chosen_ids"] for row in tokenized])
        assert order == batch_order(sequences[half:], [row["rejected_ids"] for row in tokenized])
        # Rewards in dataset row order; the batch (chosen rows, then rejected rows) as the trainer fed it.
        cases.append({**case, "batch_order": order,
                      "batch": {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                      "rewards_chosen": to_row_order(batch["logits"][:half], order),
                      "rewards_rejected": to_row_order(batch["logits"][half:], order),
                      "log": logged})

    model = AutoModelForSequenceClassification.from_pretrained(REWARD_DIR, dtype=torch.float32).eval()
    forward = []
    for texts in (FORWARD_TEXTS, FORWARD_EDGE_TEXTS):
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits
        forward.append({"texts": texts, "input_ids": enc["input_ids"].tolist(),
                        "attention_mask": enc["attention_mask"].tolist(), "logits": logits.squeeze(-1).tolist()})
    return {"rows": ROWS, "margins": MARGINS, "pad_token_id": tok.pad_token_id, "eos_token": tok.eos_token,
            "tokenized": tokenized, "cases": cases, "forward": forward[0], "forward_pad_inside": forward[1]}


def dpo_chat_fixture():
    tok = AutoTokenizer.from_pretrained(CHAT_TOKENIZER_DIR)
    policy = AutoModelForCausalLM.from_pretrained(POLICY_DIR, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(REFERENCE_DIR, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, learning_rate=0.0, max_steps=1, per_device_train_batch_size=len(CHAT_ROWS),
                         logging_steps=1, beta=0.1, loss_type=["sigmoid"], report_to=[], save_strategy="no",
                         use_cpu=True, seed=0, bf16=False)
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(CHAT_ROWS),
                             processing_class=tok)
        policy_seen, reference_seen = [], []
        record_logps(policy, policy_seen)
        record_logps(reference, reference_seen)
        trainer.train()
        logged = dict(trainer.state.log_history[0])
        tokenized = [{key: row[key] for key in DPO_ID_COLUMNS} for row in trainer.train_dataset]
    rendered = [{
        "prompt": tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
        "prompt_chosen": tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False),
        "prompt_rejected": tok.apply_chat_template(row["prompt"] + row["rejected"], tokenize=False),
    } for row in CHAT_ROWS]
    (logps, lengths, sequences), (ref_logps, _, ref_sequences) = policy_seen[0], reference_seen[0]
    assert sequences == ref_sequences
    half = len(CHAT_ROWS)
    order = batch_order(sequences[:half], [row["prompt_ids"] + row["chosen_ids"] for row in tokenized])
    assert order == batch_order(sequences[half:], [row["prompt_ids"] + row["rejected_ids"] for row in tokenized])
    # In dataset row order (the trainer's sampler shuffled the rows; `batch_order` is how).
    inputs = {
        "chosen_logps": to_row_order(logps[:half], order), "rejected_logps": to_row_order(logps[half:], order),
        "ref_chosen_logps": to_row_order(ref_logps[:half], order),
        "ref_rejected_logps": to_row_order(ref_logps[half:], order),
        "chosen_tokens": to_row_order(lengths[:half], order), "rejected_tokens": to_row_order(lengths[half:], order),
    }
    return {"beta": 0.1, "loss_type": ["sigmoid"], "chat_template": CHAT_TEMPLATE, "rows": CHAT_ROWS,
            "rendered": rendered, "tokenized": tokenized, "batch_order": order, "inputs": inputs, "log": logged}


def main():
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)

    build_reward_model(tok).save_pretrained(REWARD_DIR)
    tok.save_pretrained(REWARD_DIR)
    REWARD_OUT.write_text(json.dumps(reward_fixture(tok), indent=1) + "\n")
    print(f"wrote {REWARD_DIR} and {REWARD_OUT}")

    chat_tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    chat_tok.chat_template = CHAT_TEMPLATE
    # transformers 5 would write the template to chat_template.jinja by default; keep it in tokenizer_config.json.
    chat_tok.save_pretrained(CHAT_TOKENIZER_DIR, save_jinja_files=False)
    DPO_CHAT_OUT.write_text(json.dumps(dpo_chat_fixture(), indent=1) + "\n")
    print(f"wrote {CHAT_TOKENIZER_DIR} and {DPO_CHAT_OUT}")


if __name__ == "__main__":
    main()
