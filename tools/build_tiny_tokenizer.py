"""Rebuild zoft/models/tiny_tokenizer.json, the tokenizer of `tiny:<arch>` test models.

A byte-level BPE (any text encodes, decoding is exact) trained on text this project owns:
the toy task's sentences, the MeZO prompt words, and the docstrings of Python's standard
library. Run once by hand; the JSON is committed so that every machine builds the same model.

    python tools/build_tiny_tokenizer.py
"""

import pkgutil
import importlib
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from zoft.data.toy import toy_rows

PROMPT_WORDS = "It was terrible great Yes No Maybe so because Answer: Question: Title: Context: true false"


def corpus():
    for split in ("train", "validation", "test"):
        for row in toy_rows(split):
            yield f"{row['sentence']} It was {'great' if row['label'] else 'terrible'}"
    for _ in range(200):
        yield PROMPT_WORDS
    for info in pkgutil.iter_modules():
        if info.name.startswith("_") or info.name in {"antigravity", "this"}:
            continue
        try:
            doc = importlib.import_module(info.name).__doc__
        except Exception:
            continue
        if doc:
            yield doc


def main() -> None:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    out = Path(__file__).resolve().parent.parent / "zoft" / "models" / "tiny_tokenizer.json"
    tokenizer.save(str(out))
    print(f"wrote {out} ({tokenizer.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
