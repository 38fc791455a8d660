"""`toy_sentiment`: a movie-review sentiment task written by zoft itself, shipped as code.

It exists so that the quickstart and the tests run offline with no download: sentences are
built from word lists ("the plot was truly dull .") and labelled by the adjective's polarity,
in SST-2's field layout ({"sentence", "label"}; 0 negative, 1 positive).
"""

from __future__ import annotations

import itertools
import random

POSITIVE = (
    "wonderful brilliant delightful moving charming superb excellent beautiful funny clever "
    "gripping touching stunning fresh warm smart joyful lovely great fine"
).split()
NEGATIVE = (
    "dull boring awful tedious clumsy bland messy stale silly weak painful lifeless shallow "
    "tiresome sloppy flat dreary poor bad ugly"
).split()
SUBJECTS = (
    "the film", "the movie", "the story", "the acting", "the plot", "the script",
    "the ending", "the cast", "the music", "the picture", "this film", "this movie",
)
VERBS = ("is", "was", "feels", "seemed", "looks", "remains")
INTENSIFIERS = ("", "truly", "very", "rather", "quite", "simply", "really")
CLOSERS = (".", "!", ", overall .", "from start to finish .")

SPLIT_SIZES = {"train": 2000, "validation": 500, "test": 500}


def toy_rows(split: str) -> list[dict]:
    """A fixed, disjoint sample of all sentences for each split (same on every machine)."""
    combos = list(itertools.product(SUBJECTS, VERBS, INTENSIFIERS, POSITIVE + NEGATIVE, CLOSERS))
    random.Random(20261122).shuffle(combos)
    start = 0
    for name, size in SPLIT_SIZES.items():
        if name == split:
            picked = combos[start : start + size]
            return [
                {"sentence": " ".join(w for w in (s, v, i, a, c) if w), "label": int(a in POSITIVE)}
                for s, v, i, a, c in picked
            ]
        start += size
    raise KeyError(split)
