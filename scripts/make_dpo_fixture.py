#!/usr/bin/env python3
"""DPO loss parity fixture: what TRL 1.16's DPOTrainer logs at step 1 for each loss type, with the per-sequence
log-probs it computed them from.

Needs `pip install torch transformers trl==1.16.0` (CPU is enough). Run from the repository root:

    python3 scripts/make_dpo_fixture.py    # writes crates/trl/tests/fixtures/dpo_losses.json and dpo_tokenizer/

A tiny Llama policy and a differently seeded reference score four preference rows (with a byte-level BPE
tokenizer trained here on them, saved as `dpo_tokenizer/`, and the two models as `dpo_policy/`, `dpo_reference/`); for each `loss_type` DPOTrainer runs one step at
learning rate 0 and its first log record is kept. The per-sequence sums of completion log-probs (policy and
reference, chosen and rejected) and the completion lengths are recorded from the trainer's own forward passes, so
llmtrain's loss can be checked against TRL's from the same inputs; the token ids TRL's dataset preparation gives
each row (EOS text appended, the completion starting where prompt and prompt+completion diverge) are kept too.
"""
import json
import pathlib
import tempfile

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import DPOConfig, DPOTrainer

OUT = pathlib.Path("crates/trl/tests/fixtures/dpo_losses.json")
TOKENIZER_DIR = pathlib.Path("crates/trl/tests/fixtures/dpo_tokenizer")
ROWS = [
    {"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a dog barks loudly"},
    {"prompt": "one two three", "chosen": " four five", "rejected": " seven"},
    # The prompt ends inside a word: its last token merges with the completion's first.
    {"prompt": "red gr", "chosen": "een blue", "rejected": "ey green red"},
    {"prompt": "a b c d", "chosen": " e f g</s>", "rejected": " z y"},
]
LOSSES = [
    (["sigmoid"], None, 0.0),
    (["hinge"], None, 0.0),
    (["ipo"], None, 0.0),
    (["robust"], None, 0.1),
    (["sigmoid_norm"], None, 0.0),
    (["apo_zero"], None, 0.0),
    (["apo_down"], None, 0.0),
    (["sft"], None, 0.0),
    (["sigmoid", "sft"], [1.0, 0.5], 0.0),
]
METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected"]


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [row["prompt"] + row["chosen"] for row in ROWS] + [row["prompt"] + row["rejected"] for row in ROWS]
    tok.train_from_iterator(corpus * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def model(seed, vocab):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def record_logps(net, seen):
    """Records, for each forward DPOTrainer runs on `net`, the per-sequence sums of completion log-probs it takes
    from the model's output (as `_compute_loss` does) and the completion lengths."""

    def hook(_module, _args, kwargs, output):
        shifted = kwargs["labels"][:, 1:]
        per_token = output.log_probs[:, -shifted.size(1):].detach()
        seen.append(((per_token.sum(1)).tolist(), (shifted != -100).sum(1).float().tolist()))

    return net.register_forward_hook(hook, with_kwargs=True)


def main():
    dataset = Dataset.from_list(ROWS)
    cases = []
    for loss_type, weights, smoothing in LOSSES:
        # Fresh models for each trainer (the same seeds, the same weights): a trainer leaves settings on the
        # model it trained that change its numerics slightly.
        tok = tokenizer()
        policy, reference = model(0, len(tok)), model(1, len(tok))
        with tempfile.TemporaryDirectory() as out:
            # TRL's configs default to bf16=True, which autocasts the forward to bf16 even on the CPU: f32 here.
            args = DPOConfig(output_dir=out, learning_rate=0.0, max_steps=1, per_device_train_batch_size=len(ROWS),
                             logging_steps=1, beta=0.1, loss_type=loss_type, loss_weights=weights,
                             label_smoothing=smoothing, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             bf16=False)
            trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                                 processing_class=tok)
            policy_seen, reference_seen = [], []
            record_logps(policy, policy_seen)
            record_logps(reference, reference_seen)
            trainer.train()
            logged = trainer.state.log_history[0]
            tokenized = [{key: row[key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")}
                         for row in trainer.train_dataset]
        (logps, lengths), (ref_logps, _) = policy_seen[0], reference_seen[0]
        half = len(ROWS)
        inputs = {
            "chosen_logps": logps[:half], "rejected_logps": logps[half:],
            "ref_chosen_logps": ref_logps[:half], "ref_rejected_logps": ref_logps[half:],
            "chosen_tokens": lengths[:half], "rejected_tokens": lengths[half:],
        }
        cases.append({"loss_type": loss_type, "loss_weights": weights, "label_smoothing": smoothing,
                      "inputs": inputs, "metrics": {name: logged[name] for name in METRICS}})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(TOKENIZER_DIR)
    # The policy and the reference as HF checkpoints (every case built them alike from their seeds).
    model(0, len(tok)).save_pretrained(OUT.parent / "dpo_policy")
    model(1, len(tok)).save_pretrained(OUT.parent / "dpo_reference")
    fixture = {"beta": 0.1, "rows": ROWS, "tokenized": tokenized, "cases": cases}
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
