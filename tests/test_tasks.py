"""Each task: a hand-made row in its real field layout -> MeZO's exact prompt, candidates, label,
then a loss and a metric through a tiny model. Plus the real files in ../shared/data."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config.schema import DataConfig
from zoft.data.loading import Records, sample_splits, to_examples, with_demonstrations
from zoft.data.tasks import TASKS, Example
from zoft.engine.objective import OBJECTIVES, encode, normalize_answer, squad_f1
from zoft.models.tiny import build_tiny

ROWS = {
    "sst2": [{"sentence": "a gorgeous film ", "label": 1}],
    "rte": [{"premise": "Cats purr.", "hypothesis": "Cats are loud.", "label": "not_entailment", "idx": 0}],
    "cb": [{"premise": "It rained. The road is wet.", "hypothesis": "the road is wet", "label": "neutral", "idx": 0}],
    "boolq": [
        {"question": "is the sky blue", "passage": "The sky is blue.", "label": True, "idx": 0},  # SuperGLUE jsonl
        {"question": "is the sky blue", "passage": "The sky is blue.", "answer": True},  # hub google/boolq
    ],
    "wsc": [
        {"text": "Mark told Pete lies about himself. He should be honest.", "label": False, "idx": 0,
         "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 6, "span2_text": "He"}},
        {"text": "Mark told Pete lies about himself. He should be honest.", "label": 0, "idx": 0,
         "span1_index": 0, "span1_text": "Mark", "span2_index": 6, "span2_text": "He"},  # hub wsc.fixed
    ],
    "wic": [{"word": "place", "sentence1": "Do you want to come over to my place later?",
             "sentence2": "A political system with no place for the less prominent groups.", "label": False, "idx": 0}],
    "multirc": [{"idx": 0, "version": 1.1, "passage": {"text": "Sam ate an apple.", "questions": [
        {"question": "What did Sam eat?", "idx": 0, "answers": [
            {"text": "an apple", "idx": 0, "label": 1}, {"text": "a pear", "idx": 1, "label": 0}]}]}}],
    "copa": [{"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
              "choice2": "The grass was cut.", "question": "cause", "label": 0, "idx": 0}],
    "record": [
        {"idx": 0, "source": "Daily mail", "passage": {"text": "Obama met Merkel.@highlight\nThey talked",
         "entities": [{"start": 0, "end": 4}, {"start": 10, "end": 15}]},
         "qas": [{"query": "@placeholder met Merkel", "idx": 0, "answers": [{"start": 0, "end": 4, "text": "Obama"}]}]},
        {"passage": "Obama met Merkel.@highlight\nThey talked", "query": "@placeholder met Merkel",
         "entities": ["Merkel", "Obama"], "answers": ["Obama"], "idx": {"passage": 0, "query": 0}},  # hub
    ],
    "squad": [
        {"title": "Denver", "paragraphs": [{"context": "The Broncos won in 2016.", "qas": [
            {"id": "q1", "question": "Who won?", "answers": [{"text": "The Broncos", "answer_start": 0}]}]}]},
        {"id": "q1", "title": "Denver", "context": "The Broncos won in 2016.", "question": "Who won?",
         "answers": {"text": ["The Broncos"], "answer_start": [0]}},  # hub rajpurkar/squad
    ],
    "drop": [{"section_id": "s", "query_id": "q", "passage": "Bears scored 7 points.", "question": "How many points?",
              "answers_spans": {"spans": ["7"], "types": ["number"]}}],
    "sst2_encoder": [{"sentence": "a gorgeous film", "label": 1, "idx": 0}],
    "sst5": [{"sentence": "a great film", "label": 3}, {"text": "a great film", "label": 3, "label_text": "positive"}],
    "trec": [{"sentence": "Who was Galileo ?", "label": 3}, {"text": "Who was Galileo ?", "coarse_label": 3, "fine_label": 7}],
    "snli": [{"premise": "A man sleeps .", "hypothesis": "A man rests .", "label": "entailment"},
             {"premise": "A man sleeps .", "hypothesis": "A man rests .", "label": -1}],
    "mnli": [{"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0, "idx": 0}],
}

EXPECTED = {  # task: (prompt, candidates, label) of the first example of each row layout
    "sst2": ("a gorgeous film It was", (" terrible", " great"), 1),
    "rte": ('Cats purr.\nDoes this mean that "Cats are loud." is true? Yes or No?\n', ("Yes", "No"), 1),
    "cb": ('Suppose It rained. The road is wet. Can we infer that "the road is wet"? Yes, No, or Maybe?\n', ("Yes", "No", "Maybe"), 2),
    "boolq": ("The sky is blue. Is the sky blue?\n", ("No", "Yes"), 1),
    "wsc": ('Mark told Pete lies about himself. He should be honest.\nIn the previous sentence, does the pronoun "he" refer to Mark? Yes or No?\n', ("No", "Yes"), 0),
    "wic": ('Does the word "place" have the same meaning in these two sentences? Yes, No?\nDo you want to come over to my place later?\nA political system with no place for the less prominent groups.\n', ("No", "Yes"), 0),
    "multirc": ('Sam ate an apple.\nQuestion: What did Sam eat?\nI found this answer "an apple". Is that correct? Yes or No?\n', ("No", "Yes"), 1),
    "copa": ("My body cast a shadow over the grass because", (" the sun was rising.", " the grass was cut."), 0),
    "record": ('Obama met Merkel.- They talked\n@placeholder met Merkel\nQuestion: what is the "@placeholder"\nAnswer:', (" Merkel", " Obama"), 1),
    "squad": ("Title: Denver\nContext: The Broncos won in 2016.\nQuestion: Who won?\nAnswer:", (" The Broncos\n",), 0),
    "drop": ("Passage: Bears scored 7 points.\nQuestion: How many points?\nAnswer:", (" 7\n",), 0),
    "sst2_encoder": ("a gorgeous film", (), 1),
    "sst5": ("a great film", (), 3),
    "trec": ("Who was Galileo ?", (), 3),
    "snli": ("A man sleeps .", (), 0),
    "mnli": ("A man sleeps.", (), 0),
}


def examples_of(name: str) -> list[Example]:
    task = TASKS.get(name, "")
    records, rows = [], []
    for number, row in enumerate(ROWS[name], start=1):
        flat = task.flatten(row)
        records += flat
        rows += [number] * len(flat)
    return to_examples(task, Records(records, rows, "rows"), range(len(records)), None)


def test_every_registered_task_is_covered():
    assert set(TASKS.names()) - {"toy_sentiment"} == set(ROWS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_candidates_and_label_are_mezos(name):
    examples = examples_of(name)
    first = examples[0]
    assert (first.prompt, first.candidates, first.label) == EXPECTED[name]
    layouts = {e for e in examples}  # every layout of the task gives the same example
    if name == "multirc":
        assert [e.label for e in examples] == [1, 0]
    elif name == "snli":
        assert len(examples) == 1  # label -1 (no gold label) is not an example
    else:
        assert len(layouts) == 1, layouts


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loss_and_metric_through_a_tiny_model(name):
    task = TASKS.get(name, "")
    model, tok = build_tiny("tiny:bert-16x1" if task.kind == "encoder" else "tiny:llama-16x1", 0, task.num_labels)
    model.eval()
    items = encode(tok, examples_of(name) * 2, 128, task.kind)
    objective = OBJECTIVES[task.kind]
    with torch.no_grad():
        loss = objective.loss(model, objective.train_batch(items, tok.pad_token_id))
    assert torch.isfinite(loss) and loss > 0
    result = objective.evaluate(model, tok, items, batch_size=3)
    assert 0.0 <= result[objective.metric] <= 1.0 and result["n"] == len(items)


def test_squad_f1_and_exact_match():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert squad_f1("Denver Broncos", "the Denver Broncos") == 1.0
    assert squad_f1("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    assert squad_f1("Carolina", "Denver Broncos") == 0.0


def test_icl_puts_the_same_gold_demonstrations_before_every_prompt():
    pool = [Example(f"p{i} It was", (" bad", " good"), i % 2) for i in range(10)]
    targets = [Example("x It was", (" bad", " good"), 0), Example("y It was", (" bad", " good"), 1)]
    shown = with_demonstrations(targets, pool, 3, seed=0)
    context = shown[0].prompt[: -len("x It was")]
    assert shown[1].prompt == context + "y It was"
    assert context.count("\n\n") == 3 and ("p1 It was good\n\n" in context or "p1" not in context)
    assert with_demonstrations(targets, pool, 3, seed=0) == shown and with_demonstrations(targets, pool, 0, 0) == targets


@pytest.mark.parametrize(
    "name, sizes",
    [("sst2", (1000, 500, 872)), ("cb", (150, 100, 56)), ("copa", (300, 100, 100)), ("trec", (1000, 500, 500))],
)
def test_real_files_load_with_the_mezo_protocol(name, sizes, shared_data):
    cfg = DataConfig(task=name, path=str(shared_data / "{task}"), num_train=1000, num_eval=1000)  # MeZO dev sizes
    splits = sample_splits(cfg, 0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == sizes
    labels = {e.label for e in splits.train}
    assert labels == set(range(TASKS.get(name, "").num_labels or len(splits.train[0].candidates)))


def test_squad_trains_on_one_article_half_and_tests_on_the_other(shared_data):
    cfg = DataConfig(task="squad", path=str(shared_data / "squad"), num_train=200, num_dev=50, num_eval=100)
    splits = sample_splits(cfg, 0)
    halves = json.loads((shared_data / "squad" / "article_halves.json").read_text())
    title = lambda e: e.prompt.split("\n")[0].removeprefix("Title: ")  # noqa: E731
    assert {title(e) for e in splits.train + splits.dev} <= set(halves["half_A_titles"])
    assert {title(e) for e in splits.test} <= set(halves["half_B_titles"])
    assert all(e.answers for e in splits.test)


def test_zoft_eval_runs_cb_copa_squad_on_the_real_files(tmp_path, shared_data):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name_or_path: 'tiny:llama-16x1'}}\n"
        f"data: {{task: cb, path: '{shared_data}/{{task}}', num_train: 100, num_dev: 20, num_eval: 30}}\n"
        f"run: {{name: ev, output_dir: '{tmp_path}/runs'}}\n"
    )
    result = CliRunner().invoke(app, ["eval", str(recipe), "--tasks", "cb,copa,squad", "--icl", "2"])
    assert result.exit_code == 0, result.output
    for name, metric in (("cb", "accuracy"), ("copa", "accuracy"), ("squad", "f1")):
        record = json.loads((tmp_path / "runs" / "ev" / "eval" / f"{name}_test_none_icl2.json").read_text())
        assert record["n"] == 30 and record["icl_shots"] == 2 and 0 <= record[metric] <= 1


def test_zoft_eval_scores_a_runs_checkpoints(tiny, tmp_path):
    from zoft.config.loader import recipe_from_dict
    from zoft.engine.trainer import Trainer

    Trainer(recipe_from_dict(tiny)).run()
    run = f"{tiny['run']['output_dir']}/{tiny['run']['name']}"
    runner = CliRunner()
    scores = {}
    for which in ("none", "best", "step_6", "latest"):
        result = runner.invoke(app, ["eval", run, "--checkpoint", which, "--split", "dev"])
        assert result.exit_code == 0, result.output
        scores[which] = json.loads((tmp_path / "runs" / "t" / "eval" / f"toy_sentiment_dev_{which}.json").read_text())
    default = runner.invoke(app, ["eval", run, "--split", "dev"])  # no --checkpoint: the best one
    assert default.exit_code == 0, default.output
    assert (tmp_path / "runs" / "t" / "eval" / "toy_sentiment_dev_best.json").is_file()
    assert scores["latest"]["loss"] == scores["step_6"]["loss"]
    assert scores["none"]["loss"] != scores["step_6"]["loss"]  # the trained weights are really applied
    bad = runner.invoke(app, ["eval", run, "--checkpoint", "step_99"])
    assert bad.exit_code == 2 and "no complete 'step_99' checkpoint" in bad.output
    unknown = runner.invoke(app, ["eval", run, "--tasks", "cbb"])
    assert unknown.exit_code == 2 and "did you mean 'cb'" in unknown.output
