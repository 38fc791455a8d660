"""Data: MeZO k-shot sampling, the SST-2 template, local files, and errors naming file and row."""

import json

import pytest

from zoft.config.schema import DataConfig
from zoft.data.loading import sample_splits
from zoft.data.tasks import TASKS
from zoft.data.toy import toy_rows
from zoft.errors import ZoftError


def test_sst2_template_and_verbalizer_are_mezos():
    ex = TASKS.get("sst2", "data.task").example({"sentence": "a gorgeous film ", "label": 1})
    assert ex.prompt == "a gorgeous film It was"
    assert ex.candidates == (" terrible", " great") and ex.label == 1


def test_custom_template_names_its_fields():
    ex = TASKS.get("sst2", "data.task").example({"sentence": "fine", "label": 0}, "Review: {sentence}\nSentiment:")
    assert ex.prompt == "Review: fine\nSentiment:"


def test_mezo_sampling_sizes_disjointness_and_seed(shared_data):
    cfg = DataConfig(task="sst2", path=str(shared_data / "sst2"), num_train=100, num_dev=50, num_eval=70)
    a, b, c = sample_splits(cfg, 0), sample_splits(cfg, 0), sample_splits(cfg, 1)
    assert (len(a.train), len(a.dev), len(a.test)) == (100, 50, 70)
    assert a == b and a.train != c.train
    assert not {e.prompt for e in a.train} & {e.prompt for e in a.dev}


def test_small_pools_keep_num_dev_and_train_on_the_rest():
    cfg = DataConfig(task="toy_sentiment", num_train=5000, num_dev=100, num_eval=10)
    splits = sample_splits(cfg, 0)  # the toy train split has 2000 rows
    assert (len(splits.train), len(splits.dev)) == (1900, 100)


def test_toy_task_is_fixed_balanced_and_disjoint():
    train, test = toy_rows("train"), toy_rows("test")
    assert toy_rows("train") == train and len(train) == 2000
    assert 0.4 < sum(r["label"] for r in train) / len(train) < 0.6
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in test}


def write_split(folder, split, rows, text=None):
    folder.mkdir(exist_ok=True)
    (folder / f"{split}.jsonl").write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in rows))


def test_a_row_missing_a_field_names_the_file_and_row(tmp_path):
    rows = [{"sentence": "good", "label": 1}] * 5 + [{"text": "oops", "label": 0}]
    write_split(tmp_path / "d", "train", rows)
    write_split(tmp_path / "d", "validation", rows[:2])
    cfg = DataConfig(task="sst2", path=str(tmp_path / "d"), num_train=5, num_dev=1, num_eval=2)
    with pytest.raises(ZoftError) as info:
        sample_splits(cfg, 0)
    assert info.value.problems == [f"{tmp_path / 'd' / 'train.jsonl'}: row 6: missing field 'sentence' (task sst2)"]


def test_a_label_outside_the_classes_is_named(tmp_path):
    rows = [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 7}]
    write_split(tmp_path / "d", "train", rows)
    write_split(tmp_path / "d", "validation", rows[:1])
    cfg = DataConfig(task="sst2", path=str(tmp_path / "d"), num_train=1, num_dev=0, num_eval=1)
    with pytest.raises(ZoftError, match="row 2: label 7 is not a class of sst2"):
        sample_splits(cfg, 0)


def test_malformed_json_and_missing_split_are_named(tmp_path):
    write_split(tmp_path / "d", "train", None, text='{"sentence": "ok", "label": 1}\n{not json\n')
    cfg = DataConfig(task="sst2", path=str(tmp_path / "d"), num_train=1, num_dev=0, num_eval=1)
    with pytest.raises(ZoftError, match="train.jsonl: cannot be read"):
        sample_splits(cfg, 0)
    write_split(tmp_path / "e", "train", [{"sentence": "ok", "label": 1}])
    cfg.path = str(tmp_path / "e")
    with pytest.raises(ZoftError, match="has no validation split"):
        sample_splits(cfg, 0)
