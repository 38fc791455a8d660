"""params.mode lora: PEFT adapters trained by ZO, checkpointed, resumed exactly, saved for peft."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config.loader import recipe_from_dict
from zoft.errors import ZoftError
from zoft.models.tiny import build_tiny

from test_train import assert_resume_is_exact, run_dir, train


@pytest.fixture
def lora(tiny):
    tiny["model"] = {"name_or_path": "tiny:llama-32x2"}
    tiny["params"] = {"mode": "lora", "lora_r": 4}
    tiny["optim"] = {"lr": 1e-2}
    return tiny


def test_only_the_adapters_train_and_are_checkpointed(lora):
    train(lora)
    saved = load_file(run_dir(lora) / "checkpoints" / "step_0000006" / "trainable.safetensors")
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in saved} == {"q_proj", "v_proj"}
    assert any(float(t.abs().sum()) > 0 for k, t in saved.items() if "lora_B" in k)  # B moved from zero
    config = json.loads((run_dir(lora) / "model" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_the_saved_adapter_loads_with_peft_and_reproduces_the_trained_model(lora):
    from peft import PeftModel

    from zoft.engine.trainer import build_session

    train(lora)
    base, tok = build_tiny("tiny:llama-32x2", 0)
    loaded = PeftModel.from_pretrained(base, run_dir(lora) / "model").eval()
    lora["checkpoint"]["resume"] = "auto"
    lora["model"]["device"] = "cpu"  # beside the base built on the CPU
    session = build_session(recipe_from_dict(lora), with_method=False)
    from zoft.engine import checkpoint

    checkpoint.load_weights(run_dir(lora) / "checkpoints" / "best", session.params)
    ids = tok(["the film was great"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, session.model(**ids).logits)


@pytest.mark.parametrize("method, optim", [({"name": "mezo"}, {"lr": 1e-2}), ({"name": "tezo", "rank": 2}, {"name": "adam", "lr": 1e-3})])
def test_lora_runs_resume_bit_identically(lora, method, optim):
    lora["method"], lora["optim"] = method, optim
    assert_resume_is_exact(lora)


def test_eval_of_a_lora_run_applies_the_adapter(lora):
    train(lora)
    runner = CliRunner()
    scores = {}
    for which in ("none", "latest"):
        result = runner.invoke(app, ["eval", str(run_dir(lora)), "--checkpoint", which, "--split", "dev"])
        assert result.exit_code == 0, result.output
        scores[which] = json.loads((run_dir(lora) / "eval" / f"toy_sentiment_dev_{which}.json").read_text())["loss"]
    assert scores["none"] != scores["latest"]


def test_unknown_lora_targets_name_the_key_and_the_modules(lora):
    lora["params"]["lora_targets"] = ["query"]
    with pytest.raises(ZoftError) as info:
        train(lora)
    assert info.value.problems[0].startswith("params.lora_targets:") and "q_proj" in info.value.problems[0]
