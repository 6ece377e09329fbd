#!/usr/bin/env python3
"""Makes the small instruction dataset of configs/sft-lora.toml, configs/sft-qlora.toml and the configs built on them
(configs/zero2.toml, configs/full-zero3.toml, configs/multinode.toml; Python 3 standard library only).

    python3 scripts/make_sft_data.py [--out data/sft] [--seed 0]

Three word-list tasks in TRL's prompt/completion format, over words of the Shakespeare corpus the quickstart model
was pretrained on: count the words (one to six), say whether their number is even or odd, and say which of two lists
is longer. A pretrained language model does none of them before finetuning; each depends on the lists' lengths, not
on which words they hold, so accuracy on held-out word combinations measures whether finetuning taught the tasks
rather than memorised rows. (Copying tasks, such as repeating the first word, proved beyond the tiny quickstart
model in a few hundred steps, with full finetuning as with LoRA.) `train.jsonl` (2000 rows) and `test.jsonl` (200 rows); no word combination of
the test split occurs in the training split.
"""
import argparse
import json
import os
import random

WORDS = """
king queen lord lady love death night day heaven earth blood heart crown sword fool father mother son daughter
brother sister friend honour grace mercy fortune nature time world life soul eye hand head face tongue word
name man woman child youth age peace war power fear hope joy grief sorrow shame truth faith duty court house
state land sea fire air light dark gold silver rose flower tree storm wind rain sun moon star ghost spirit dream
sleep bed grave tomb letter ring gift crown throne field army battle enemy traitor prince duke earl knight
servant master soldier captain doctor priest nurse maid widow wife husband lover beauty virtue honesty wisdom
madness justice law
""".split()

NUMBERS = ["one", "two", "three", "four", "five", "six"]


def count_task(rng):
    words = tuple(rng.sample(WORDS, rng.randint(1, 6)))
    return words, "Count: " + " ".join(words) + "\nAnswer:", " " + NUMBERS[len(words) - 1]


def parity_task(rng):
    words = tuple(rng.sample(WORDS, rng.randint(1, 6)))
    return words, "Even or odd: " + " ".join(words) + "\nAnswer:", " even" if len(words) % 2 == 0 else " odd"


def longer_task(rng):
    n, m = rng.sample(range(1, 6), 2)
    words = tuple(rng.sample(WORDS, n + m))
    first, second = " ".join(words[:n]), " ".join(words[n:])
    return words, f"Longer list: {first} | {second}\nAnswer:", " first" if n > m else " second"


TASKS = [count_task, parity_task, longer_task]


def rows(rng, count, used, avoid):
    out = []
    while len(out) < count:
        task = TASKS[len(out) % len(TASKS)]
        words, prompt, completion = task(rng)
        key = (task.__name__, words)
        if key in used or key in avoid:
            continue
        used.add(key)
        out.append({"prompt": prompt, "completion": completion})
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="data/sft")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    test_keys = set()
    test = rows(rng, 200, test_keys, set())
    train = rows(rng, 2000, set(), test_keys)
    for name, data in [("train.jsonl", train), ("test.jsonl", test)]:
        with open(os.path.join(args.out, name), "w") as f:
            for row in data:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
