"""Regenerate the example datasets, byte for byte: `python examples/make_examples.py [OUT_DIR]`.

arith.jsonl  alpaca: two-digit addition, {"instruction": "What is 12 + 30?", "input": "", "output": "42"}
shout.jsonl  chat:   {"messages": [user "Shout this: <sentence>", assistant "<SENTENCE>!"]}

Both are built from fixed seeds, so the committed files are exactly what this script writes.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ARITH_SEED, ARITH_COUNT = 1234, 1200
SHOUT_SEED, SHOUT_COUNT = 4321, 1100

DETERMINERS = ["the", "a", "my", "your", "our", "this", "that", "every"]
ADJECTIVES = ["red", "small", "quiet", "happy", "old", "bright", "lazy", "brave", "cold", "green"]
NOUNS = ["cat", "dog", "weather", "river", "teacher", "garden", "train", "bird", "city", "kettle", "band", "robot"]
VERBS = ["sees", "likes", "follows", "finds", "paints", "visits", "hears", "carries"]
ENDINGS = ["today", "tonight", "again", "outside", "slowly", "at noon"]


def arith_records() -> list[dict]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    sample = random.Random(ARITH_SEED).sample(pairs, ARITH_COUNT)
    return [{"instruction": f"What is {a} + {b}?", "input": "", "output": str(a + b)} for a, b in sample]


def _noun_phrase(rng: random.Random) -> list[str]:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    return words + [rng.choice(NOUNS)]


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.2:
        # "the weather is nice today" style: noun phrase + is + adjective (+ ending)
        words = _noun_phrase(rng) + ["is", rng.choice(ADJECTIVES)]
    else:
        words = _noun_phrase(rng) + [rng.choice(VERBS)] + _noun_phrase(rng)
    if rng.random() < 0.5:
        words += rng.choice(ENDINGS).split()
    return " ".join(words)


def shout_records() -> list[dict]:
    rng = random.Random(SHOUT_SEED)
    sentences: list[str] = []
    seen: set[str] = set()
    while len(sentences) < SHOUT_COUNT:
        sentence = _sentence(rng)
        if sentence not in seen and 4 <= len(sentence.split()) <= 8:
            seen.add(sentence)
            sentences.append(sentence)
    return [
        {"messages": [{"role": "user", "content": f"Shout this: {s}"}, {"role": "assistant", "content": s.upper() + "!"}]}
        for s in sentences
    ]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_bytes("".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "arith.jsonl", arith_records())
    write_jsonl(out_dir / "shout.jsonl", shout_records())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
