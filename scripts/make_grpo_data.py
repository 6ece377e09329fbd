#!/usr/bin/env python3
"""Makes the prompts of configs/grpo.toml and configs/rloo.toml (Python 3 standard library only).

    python3 scripts/make_grpo_data.py [--out data/grpo] [--seed 1]

The three word-list tasks of scripts/make_sft_data.py (count the words, even or odd, which list is longer), as
prompt-only rows with the expected answer in an `answer` column, which the `exact_match` reward compares completions
with. No row repeats a word combination of data/sft (neither split), so the accuracy GRPO reaches on the held-out
prompts measures the tasks learned, not rows memorised. `train.jsonl`: 1200 rows.
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sft_data import TASKS  # noqa: E402


def sft_prompts(directory):
    prompts = set()
    for name in ("train.jsonl", "test.jsonl"):
        with open(os.path.join(directory, name)) as f:
            prompts.update(json.loads(line)["prompt"] for line in f)
    return prompts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="data/grpo")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sft", default="data/sft")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    avoid = sft_prompts(args.sft)
    rows, seen = [], set()
    while len(rows) < 1200:
        task = TASKS[len(rows) % len(TASKS)]
        _, prompt, completion = task(rng)
        if prompt in avoid or prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"prompt": prompt, "answer": completion.strip()})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
