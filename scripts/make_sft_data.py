#!/usr/bin/env python3
"""Makes the small instruction dataset of configs/lora.toml and configs/qlora.toml (Python 3 standard library only).

    python3 scripts/make_sft_data.py [--out data/sft] [--seed 0]

Four word tasks in TRL's prompt/completion format, over words of the Shakespeare corpus the quickstart model was
pretrained on: count the words (one to six), the first of three, the last of three, and repeat two words. A
pretrained language model does none of them before finetuning; counting depends only on the prompt's length and
the others on copying from the prompt, so accuracy on held-out combinations measures whether finetuning taught the
tasks rather than memorised rows. `train.jsonl` (2000 rows) and `test.jsonl` (200 rows); no word combination of
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


def first_task(rng):
    words = tuple(rng.sample(WORDS, 3))
    return words, "First word of: " + " ".join(words) + "\nAnswer:", " " + words[0]


def last_task(rng):
    words = tuple(rng.sample(WORDS, 3))
    return words, "Last word of: " + " ".join(words) + "\nAnswer:", " " + words[-1]


def repeat_task(rng):
    words = tuple(rng.sample(WORDS, 2))
    return words, "Repeat: " + " ".join(words) + "\nAnswer:", " " + " ".join(words)


TASKS = [count_task, first_task, last_task, repeat_task]


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
