"""model.encoder_head: labels: an encoder classifies by cosine similarity to its own embeddings of
the task's label descriptions, trains them with the rest, and saves and reloads them."""

import copy

import pytest
import torch
import yaml
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config.schema import ModelConfig
from zoft.data.tasks import TASKS
from zoft.engine.trainer import build_session
from zoft.config.loader import recipe_from_dict
from zoft.engine import checkpoint
from zoft.errors import ZoftError
from zoft.models.label_head import SAVED, SCALE, EncoderHead, with_label_head
from zoft.models.loading import load_model
from zoft.models.tiny import build_tiny

from test_train import run_dir, train


def test_each_label_description_is_classified_as_its_label():
    base, tok = build_tiny("tiny:bert-32x2", 0, 3)
    texts = ("a film that is bad", "where is the river", "who wrote this book")
    model = with_label_head(base, tok, texts, None)
    batch = tok(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits.diagonal(), torch.full((3,), SCALE))
    assert logits.argmax(1).tolist() == [0, 1, 2]
    names = [name for name, _ in model.named_parameters()]
    assert "labels" in names and not any("pooler" in n or "classifier" in n for n in names)


@pytest.fixture
def trec(tiny, shared_data) -> dict:
    tiny["model"] = {"name_or_path": "tiny:bert-32x2"}
    tiny["data"] = {"task": "trec", "path": str(shared_data / "trec"), "num_train": 32, "num_dev": 8, "num_eval": 8}
    tiny["optim"]["lr"] = 1e-1
    tiny["checkpoint"]["save_final"] = True
    return tiny


def test_the_label_embeddings_train_and_reload_from_the_saved_model(trec):
    start = build_session(recipe_from_dict(copy.deepcopy(trec)), with_method=False)
    assert dict(start.params).keys() >= {"labels"}  # auto picked the label head: trec describes its labels
    initial = dict(start.params)["labels"].clone()
    train(trec)
    trained = build_session(recipe_from_dict(copy.deepcopy(trec)), with_method=False)
    checkpoint.load_weights(run_dir(trec) / "checkpoints" / "best", trained.params)
    assert not torch.equal(dict(trained.params)["labels"], initial)  # the head moved with the encoder

    folder = run_dir(trec) / "model"
    assert (folder / SAVED).is_file()
    texts = TASKS.get("trec", "").label_texts
    reloaded, tok = load_model(ModelConfig(name_or_path=str(folder), device="cpu"), 0, EncoderHead(6, texts))
    trained.model.cpu()
    torch.testing.assert_close(reloaded.labels, dict(trained.params)["labels"])  # saved, not re-embedded
    batch = tok(["how far is the moon", "who wrote it"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trained.model(**batch).logits)
    with pytest.raises(ZoftError, match="holds 6 label embeddings; the task has 2 labels"):
        load_model(ModelConfig(name_or_path=str(folder)), 0, EncoderHead(2, texts[:2]))  # another task's head


def test_linear_asks_for_transformers_new_head(trec):
    trec["model"]["encoder_head"] = "linear"
    names = [name for name, _ in build_session(recipe_from_dict(trec), with_method=False).params]
    assert "classifier.weight" in names and "labels" not in names


def test_labels_on_a_task_without_descriptions_is_refused_naming_the_key(tmp_path):
    result = CliRunner().invoke(app, ["train", "quickstart", f"run.output_dir={tmp_path}", "--dry-run",
                                      "model.name_or_path=tiny:bert", "data.task=snli", "model.encoder_head=labels"])
    assert result.exit_code == 2, result.output
    assert "model.encoder_head: task snli has no label descriptions" in " ".join(result.output.split())


def _as_made_before_the_key(recipe: dict) -> None:
    """Stop a run and drop model.encoder_head from its config.yaml, as zoft wrote runs before the key."""
    recipe["train"]["max_steps"] = 2
    train(recipe)
    saved = run_dir(recipe) / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    del config["model"]["encoder_head"]
    saved.write_text(yaml.safe_dump(config))
    recipe["train"]["max_steps"], recipe["checkpoint"]["resume"] = 4, "auto"


def test_an_lm_run_made_before_the_key_resumes(tiny):
    _as_made_before_the_key(tiny)
    assert train(tiny)["steps"] == 4


def test_an_encoder_run_made_before_the_key_resumes_only_with_its_linear_head(trec):
    trec["model"]["encoder_head"] = "linear"  # what zoft gave encoder tasks before the key
    _as_made_before_the_key(trec)
    trec["model"]["encoder_head"] = "auto"
    with pytest.raises(ZoftError) as info:
        train(trec)  # auto gives trec the label head now
    assert info.value.problems == ["model.encoder_head: the run used 'linear', the recipe now says 'labels'"]
    trec["model"]["encoder_head"] = "linear"
    assert train(trec)["steps"] == 4
