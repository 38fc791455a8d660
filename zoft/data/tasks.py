"""Task registry: MeZO's templates and verbalizers (methods.md, Task formats) over flat records.

A task first flattens a dataset row into records (MultiRC: one per answer; SQuAD: one per
question), then formats each record with its template. Both the hub's layout and the SuperGLUE
jsonl layout of a task flatten to the same fields, so `data.template` can name any of them.
Importing this module is cheap (no torch, no datasets): the recipe validator uses it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Callable, Literal

from zoft.errors import ZoftError
from zoft.registry import Registry

Kind = Literal["classify", "choice", "generate", "encoder"]


@dataclass(frozen=True)
class Example:
    """One example: the model reads `prompt`, then candidates are scored (or an answer generated).

    For `encoder` tasks `prompt` is the text and `pair` the second text of a pair, if any.
    """

    prompt: str
    candidates: tuple[str, ...]
    label: int
    answers: tuple[str, ...] = ()  # gold answers of generation tasks, for F1 / exact match
    pair: str | None = None


def _label(mapping: dict | None = None) -> Callable[[dict], int]:
    """Read `label` (or BoolQ's `answer`): ints as they are, booleans as 0/1, names through `mapping`."""

    def read(rec: dict) -> int:
        value = rec["label"] if rec.get("label") is not None else rec["answer"]
        if isinstance(value, str) and mapping:
            if value not in mapping:
                raise ValueError(f"label {value!r} is not one of {sorted(mapping)}")
            return mapping[value]
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return int(value.lower() == "true")
        return int(value)

    return read


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    template: str  # str.format over the flat record's fields ("" for encoder tasks)
    verbalizer: tuple[str, ...] = ()  # candidate i for label i (classify tasks)
    hub_name: str | None = None
    hub_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"  # MeZO samples its test set from the validation split
    flatten: Callable[[dict], list[dict]] = field(default=lambda row: [row])
    label_of: Callable[[dict], int] = field(default=_label())
    candidates_of: Callable[[dict], tuple[str, ...]] | None = None  # choice tasks
    answers_of: Callable[[dict], tuple[str, ...]] | None = None  # generate tasks
    text_fields: tuple[str, ...] = ()  # encoder tasks: the text, and the pair's second text
    num_labels: int = 0  # encoder tasks
    label_texts: tuple[str, ...] = ()  # encoder tasks: a description of label i, embedded by the encoder (label_head.py)
    builtin: Callable[[str], list[dict]] | None = None  # rows shipped as code
    metric: str = "accuracy"
    num_dev: int = 500  # MeZO's dev size; 100 for the tasks with under 1000 training examples

    def fields(self, template: str | None = None) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(template or self.template) if name]

    def example(self, rec: dict, template: str | None = None) -> Example:
        """Format one flat record; a missing field (absent, or null as `datasets` fills it) raises KeyError."""
        for key in self.fields(template) + list(self.text_fields):
            if rec.get(key) is None:
                raise KeyError(key)
        if self.kind == "encoder":
            texts = [str(rec[k]) for k in self.text_fields]
            return Example(texts[0], (), self.label_of(rec), pair=texts[1] if len(texts) > 1 else None)
        prompt = (template or self.template).format(**{k: str(rec[k]).strip() for k in self.fields(template)})
        if self.kind == "generate":
            answers = self.answers_of(rec)
            return Example(prompt, (f" {answers[0]}\n",), 0, answers=answers)
        if self.kind == "choice":
            return Example(prompt, self.candidates_of(rec), self.label_of(rec))
        return Example(prompt, self.verbalizer, self.label_of(rec))


TASKS: Registry[Task] = Registry("task")


def register(task: Task) -> Task:
    return TASKS.register(task.name)(task)


# ---- record builders for the structured tasks -----------------------------------------------


def _boolq(row: dict) -> list[dict]:
    question = str(row.get("question", "")).strip()
    return [{**row, "question": question[:1].upper() + question[1:]}]


def _wsc(row: dict) -> list[dict]:
    target = row.get("target") or {}  # SuperGLUE jsonl nests the spans; the hub flattens them
    span1 = row.get("span1_text", target.get("span1_text"))
    span2 = row.get("span2_text", target.get("span2_text"))
    return [{**row, "span1_text": span1, "span2_text": None if span2 is None else str(span2).lower()}]


def _multirc(row: dict) -> list[dict]:
    passage = row.get("passage")
    if not isinstance(passage, dict):  # hub layout: one record per answer already
        return [row]
    return [
        {"paragraph": passage["text"], "question": q["question"], "answer": a["text"], "label": a.get("label")}
        for q in passage["questions"]
        for a in q["answers"]
    ]


def _copa(row: dict) -> list[dict]:
    premise = str(row["premise"]).strip()
    connector = {"cause": "because", "effect": "so"}[row["question"]]
    return [{**row, "premise": premise[:-1] if premise.endswith(".") else premise, "connector": connector}]


def _lower_first(text: str) -> str:
    text = str(text).strip()
    return text if text.startswith("I ") else text[:1].lower() + text[1:]


def _record(row: dict) -> list[dict]:
    passage = row["passage"]
    if isinstance(passage, dict):  # SuperGLUE jsonl: entities as spans of the passage text
        text = passage["text"]
        entities = sorted({text[e["start"] : e["end"] + 1] for e in passage["entities"]})
        return [
            {"passage": text.replace("@highlight\n", "- "), "query": qa["query"], "entities": entities,
             "answers": [a["text"] for a in qa.get("answers", [])]}
            for qa in row["qas"]
        ]
    return [{**row, "passage": str(passage).replace("@highlight\n", "- ")}]


def _record_label(rec: dict) -> int:
    entities, answers = list(rec["entities"]), list(rec["answers"])
    hits = [i for i, e in enumerate(entities) if e in answers]
    if not hits:
        raise ValueError("no answer among the entities")
    return hits[0]


def _squad(row: dict) -> list[dict]:
    if "paragraphs" not in row:  # hub layout: one record per question
        return [row]
    return [
        {"title": row["title"], "context": p["context"], "question": qa["question"], "id": qa["id"],
         "answers": {"text": [a["text"] for a in qa["answers"]]}}
        for p in row["paragraphs"]
        for qa in p["qas"]
    ]


def _squad_answers(rec: dict) -> tuple[str, ...]:
    texts = tuple(rec["answers"]["text"])
    if not texts:
        raise ValueError("no answer")
    return texts


def _drop_answers(rec: dict) -> tuple[str, ...]:
    spans = rec.get("answers_spans") or {}
    texts = tuple(spans.get("spans") or ())
    if not texts:
        raise ValueError("no answer span")
    return texts


def _single_text(row: dict) -> list[dict]:
    """Hub layouts of SST-5 / TREC call the text `text` and TREC's coarse label `coarse_label`."""
    rec = dict(row)
    if "sentence" not in rec and "text" in rec:
        rec["sentence"] = rec["text"]
    if rec.get("label") is None and "coarse_label" in rec:
        rec["label"] = rec["coarse_label"]
    return [rec]


def _with_gold_label(row: dict) -> list[dict]:
    """SNLI marks pairs without annotator agreement with label -1: they are not examples."""
    return [] if row.get("label") == -1 else [row]


def _toy_rows(split: str) -> list[dict]:
    from zoft.data.toy import toy_rows

    try:
        return toy_rows(split)
    except KeyError:
        raise ZoftError(f"toy_sentiment has no split {split!r}") from None


# ---- the suite -------------------------------------------------------------------------------

SUPERGLUE = "aps/super_glue"
YES_NO = ("Yes", "No")
NO_YES = ("No", "Yes")
NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}

register(Task("sst2", "classify", "{sentence} It was", (" terrible", " great"), "nyu-mll/glue", "sst2"))
register(Task("toy_sentiment", "classify", "{sentence} It was", (" terrible", " great"), builtin=_toy_rows))
register(Task(
    "rte", "classify", '{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n', YES_NO,
    SUPERGLUE, "rte", label_of=_label({"entailment": 0, "not_entailment": 1}),
))
register(Task(
    "cb", "classify", 'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n',
    ("Yes", "No", "Maybe"), SUPERGLUE, "cb", label_of=_label({"entailment": 0, "contradiction": 1, "neutral": 2}),
    num_dev=100,
))
register(Task("boolq", "classify", "{passage} {question}?\n", NO_YES, "google/boolq", flatten=_boolq))
register(Task(
    "wsc", "classify",
    '{text}\nIn the previous sentence, does the pronoun "{span2_text}" refer to {span1_text}? Yes or No?\n',
    NO_YES, SUPERGLUE, "wsc.fixed", flatten=_wsc,
))
register(Task(
    "wic", "classify",
    'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{sentence1}\n{sentence2}\n',
    NO_YES, SUPERGLUE, "wic",
))
register(Task(
    "multirc", "classify",
    '{paragraph}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n',
    NO_YES, SUPERGLUE, "multirc", flatten=_multirc,
))
register(Task(
    "copa", "choice", "{premise} {connector}", hub_name=SUPERGLUE, hub_config="copa", flatten=_copa,
    candidates_of=lambda rec: (f" {_lower_first(rec['choice1'])}", f" {_lower_first(rec['choice2'])}"),
    num_dev=100,
))
register(Task(
    "record", "choice", '{passage}\n{query}\nQuestion: what is the "@placeholder"\nAnswer:',
    hub_name=SUPERGLUE, hub_config="record", flatten=_record, label_of=_record_label,
    candidates_of=lambda rec: tuple(f" {e}" for e in rec["entities"]),
))
register(Task(
    "squad", "generate", "Title: {title}\nContext: {context}\nQuestion: {question}\nAnswer:",
    hub_name="rajpurkar/squad", flatten=_squad, answers_of=_squad_answers, metric="f1",
))
register(Task(
    "drop", "generate", "Passage: {passage}\nQuestion: {question}\nAnswer:",
    hub_name="ucinlp/drop", answers_of=_drop_answers, metric="f1",
))
# Encoder tasks (MiniLM, BERT): a classification head instead of a prompt. The label texts carry
# MeZO's label words (SST: terrible ... great) into sentences an encoder embeds; TREC's describe
# LM-BFF's coarse classes in its order (../shared/data/README.md).
register(Task(
    "sst2_encoder", "encoder", "", "nyu-mll/glue", "sst2", flatten=_single_text, text_fields=("sentence",), num_labels=2,
    label_texts=("A negative review: it was terrible.", "A positive review: it was great."),
))
register(Task(
    "sst5", "encoder", "", hub_name="SetFit/sst5", eval_split="test", flatten=_single_text,
    text_fields=("sentence",), num_labels=5,
    label_texts=tuple(f"It was {word}." for word in ("terrible", "bad", "okay", "good", "great")),
))
register(Task(
    "trec", "encoder", "", hub_name="CogComp/trec", eval_split="test", flatten=_single_text,
    text_fields=("sentence",), num_labels=6,
    label_texts=(
        "What is the description or definition of something?",
        "What thing or entity is it?",
        "What does the abbreviation stand for?",
        "Who is the person?",
        "Where is the location?",
        "How many, what number or date?",
    ),
))
register(Task(
    "snli", "encoder", "", hub_name="stanfordnlp/snli", flatten=_with_gold_label,
    text_fields=("premise", "hypothesis"), num_labels=3, label_of=_label(NLI3),
))
register(Task(
    "mnli", "encoder", "", hub_name="nyu-mll/glue", hub_config="mnli", eval_split="validation_matched",
    flatten=_with_gold_label, text_fields=("premise", "hypothesis"), num_labels=3, label_of=_label(NLI3),
))
