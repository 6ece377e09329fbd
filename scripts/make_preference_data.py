#!/usr/bin/env python3
"""Makes the preference dataset of configs/dpo.toml, configs/reward.toml and configs/orpo.toml (Python 3 standard
library only).

    python3 scripts/make_preference_data.py [--out data/preference] [--seed 1]

The three word-list tasks of scripts/make_sft_data.py (count the words, even or odd, which list is longer) as
preference pairs in TRL's format: the prompt, the right answer as `chosen` and a wrong one as `rejected` (another
number, the other parity, the other list). No word combination of the SFT data (train or test) occurs here, so
the SFT model has not seen these prompts. `train.jsonl` holds 1200 rows; the runs hold out 10% of them
(`[data] eval_fraction`) to measure preference accuracy.
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sft_data as sft  # noqa: E402


def wrong_answer(rng, completion):
    if completion.strip() in sft.NUMBERS:
        return " " + rng.choice([n for n in sft.NUMBERS if n != completion.strip()])
    return {" even": " odd", " odd": " even", " first": " second", " second": " first"}[completion]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="data/preference")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # The SFT data's word combinations, as make_sft_data.py draws them with its default seed.
    sft_rng = random.Random(0)
    sft_keys = set()
    sft.rows(sft_rng, 200, sft_keys, set())
    sft.rows(sft_rng, 2000, sft_keys, set())
    rng = random.Random(args.seed)
    pairs = []
    for row in sft.rows(rng, 1200, set(), sft_keys):
        pairs.append({"prompt": row["prompt"], "chosen": row["completion"], "rejected": wrong_answer(rng, row["completion"])})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train.jsonl"), "w") as f:
        for pair in pairs:
            f.write(json.dumps(pair) + "\n")


if __name__ == "__main__":
    main()
