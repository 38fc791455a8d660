"""Faults and bad input: every guard provoked on CPU (NaN, divergence, OOM, kill -9, fuzzed recipes)."""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config.loader import dotted_keys, recipe_from_dict
from zoft.config.methods import METHOD_CONFIGS, MezoConfig
from zoft.config.schema import OptimConfig, Recipe
from zoft.engine import objective as objective_module
from zoft.engine.trainer import RunStopped
from zoft.methods import METHODS
from zoft.tracking.metrics import is_step, read_metrics

from test_train import run_dir, train, train_copy, train_records


@pytest.fixture
def tiny(tiny):
    """Eager forwards: faults are injected into Objective.loss, which a replayed CUDA graph does not call."""
    tiny["train"]["cuda_graphs"] = False
    return tiny


class Faulty:
    """Wraps the classify objective's loss: call number n (1-based) gets `fault(n, loss)`."""

    def __init__(self, monkeypatch, fault):
        self.calls = 0
        original = objective_module.Objective.loss

        def loss(objective, model, batch):
            self.calls += 1
            return fault(self.calls, original(objective, model, batch))

        monkeypatch.setattr(objective_module.Objective, "loss", loss)


# ---- non-finite losses ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mezo", "lozo", "tezo", "fo"])
def test_a_non_finite_loss_changes_nothing(name):
    params = [("w", torch.randn(6, 5)), ("b", torch.randn(5))]
    before = [p.clone() for _, p in params]
    if name == "fo":
        cfg = METHOD_CONFIGS.get("fo", "")()
    else:
        cfg = METHOD_CONFIGS.get(name, "")(restore="copy")
    method = METHODS.get(name, "")(params, cfg, OptimConfig(name="adam", lr=0.1) if name != "lozo" else OptimConfig(lr=0.1), 0)
    result = method.step(lambda: sum(p.sum() for _, p in params) * float("nan"), 0, 0.1)
    assert not result.applied
    assert all(torch.equal(b, p.detach()) for b, (_, p) in zip(before, params))
    assert all(float(t.abs().sum()) == 0 for t in method.state_dict().values())  # no moment moved


def test_nan_steps_are_skipped_logged_and_stop_the_run_after_max_bad_steps(tiny, monkeypatch):
    tiny["train"].update(max_steps=20, max_bad_steps=3)
    tiny["eval"] = {"every": 0, "at_start": False}
    Faulty(monkeypatch, lambda n, loss: loss * float("nan") if n > 2 * 4 else loss)  # from step 5 on
    with pytest.raises(RunStopped) as info:
        train(tiny)
    assert "3 steps in a row (up to step 7)" in info.value.problems[0]
    assert "optim.lr" in info.value.problems[1]
    rows = read_metrics(run_dir(tiny) / "metrics.jsonl")
    assert [r["step"] for r in rows if "skipped" in r] == [5, 6, 7]
    assert all(r["loss"] is None for r in rows if "skipped" in r)
    assert (run_dir(tiny) / "checkpoints" / "step_0000007" / "DONE").is_file()


def test_an_isolated_nan_step_is_skipped_and_training_goes_on(tiny, monkeypatch):
    tiny["train"]["max_steps"] = 8
    tiny["method"]["restore"] = "copy"
    tiny["eval"] = {"every": 0, "at_start": False, "test": False}
    Faulty(monkeypatch, lambda n, loss: loss * float("nan") if n == 7 else loss)  # step 4's L(θ+εZ)
    summary = train(tiny)
    rows = [r for r in read_metrics(run_dir(tiny) / "metrics.jsonl") if "split" not in r]
    assert [r["step"] for r in rows if "skipped" in r] == [4] and summary["steps"] == 8


# ---- divergence -----------------------------------------------------------------------------


def test_a_loss_spike_rolls_back_to_the_last_checkpoint_with_a_smaller_lr(tiny, monkeypatch):
    tiny["train"].update(max_steps=80, divergence_factor=5.0)
    tiny["checkpoint"]["every"] = 20
    tiny["eval"] = {"every": 0, "at_start": False, "test": False}
    spiked = {"done": False}

    def spike(n, loss):
        if n >= 2 * 65 and not spiked["done"]:  # step 65, once
            spiked["done"] = True
            return loss * 100
        return loss

    Faulty(monkeypatch, spike)
    train(tiny)
    rows = read_metrics(run_dir(tiny) / "metrics.jsonl")
    events = [r for r in rows if r.get("event") == "rollback"]
    assert events == [{"step": 60, "event": "rollback", "diverged_at": 65, "lr_scale": 0.5}]
    steps = [r for r in rows if is_step(r)]
    assert [r["step"] for r in steps] == list(range(1, 81))  # 61-65 replayed after the rollback
    assert all(r["lr"] == pytest.approx(0.5e-3) for r in steps if r["step"] > 60)


# ---- out of memory --------------------------------------------------------------------------


def oom(at_call):
    def fault(n, loss):
        if n == at_call:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return loss

    return fault


def test_oom_in_a_step_checkpoints_the_intact_weights_and_resume_is_exact(tiny, monkeypatch, tmp_path):
    tiny["method"]["restore"] = "copy"
    tiny["eval"] = {"every": 0, "at_start": False, "test": False}
    whole = train_copy(tiny, "whole")

    faulty = Faulty(monkeypatch, oom(2 * 3 + 2))  # the L(θ−εZ) pass of step 4: weights perturbed
    with pytest.raises(RunStopped) as info:
        train(tiny)
    assert info.value.problems[0].startswith("out of GPU memory after 3 completed steps")
    assert "train.batch_size (now 4)" in info.value.problems[1] and "zoft profile-memory" in info.value.problems[2]
    from safetensors.torch import load_file

    saved = load_file(run_dir(tiny) / "checkpoints" / "step_0000003" / "trainable.safetensors")
    monkeypatch.undo()
    tiny["checkpoint"]["resume"] = "auto"
    train(tiny)
    assert train_records(tiny) == train_records(whole)
    assert faulty.calls == 8
    assert saved.keys() and all(torch.isfinite(t).all() for t in saved.values())


def test_oom_during_eval_checkpoints_and_names_the_eval_batch_size(tiny, monkeypatch):
    tiny["eval"] = {"every": 3, "at_start": False, "test": False, "batch_size": 16}
    tiny["checkpoint"]["every"] = 0
    original = objective_module.Objective.evaluate

    def evaluate(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(objective_module.Objective, "evaluate", evaluate)
    with pytest.raises(RunStopped) as info:
        train(tiny)
    assert "after 3 completed steps" in info.value.problems[0] and "eval.batch_size (now 16)" in info.value.problems[1]
    assert (run_dir(tiny) / "checkpoints" / "step_0000003" / "DONE").is_file()
    assert original is not evaluate


def test_the_cli_turns_a_stopped_run_into_a_message_and_exit_code_1(tiny, tmp_path, monkeypatch):
    Faulty(monkeypatch, oom(5))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 1
    assert "out of memory" in result.output and "Traceback" not in result.output


# ---- kill -9 during saves -------------------------------------------------------------------


def test_kill_9_at_any_moment_loses_only_work_since_the_last_checkpoint(tiny, tmp_path):
    """Kill a real `zoft train` (saving every step) at random moments; every resume picks a
    complete checkpoint, and the final trajectory equals an uninterrupted run's."""
    tiny["train"]["max_steps"] = 120
    tiny["checkpoint"].update(every=1, keep_last=2)
    tiny["eval"] = {"every": 40, "at_start": False, "test": False}
    whole = train_copy(tiny, "whole")

    tiny["checkpoint"]["resume"] = "auto"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny))
    command = [sys.executable, "-m", "zoft", "train", str(path)]
    rng = random.Random(0)
    metrics = run_dir(tiny) / "metrics.jsonl"
    kills = 0
    for _ in range(5):
        seen = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) <= seen):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.05))  # a tiny step takes milliseconds: a longer wait let the run end before its third kill
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    finish = subprocess.run(command, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert train_records(tiny) == train_records(whole)
    leftovers = [p.name for p in (run_dir(tiny) / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_save_killed_between_its_renames_is_recovered(tiny):
    from zoft.engine import checkpoint

    train(tiny)
    root = run_dir(tiny) / "checkpoints"
    (root / "best").rename(root / ".old-best-999")  # killed after moving the old one away
    (root / ".tmp-step_0000008-999").mkdir()  # and a half-written one
    checkpoint.recover(root)
    assert (root / "best" / "DONE").is_file() and not list(root.glob(".*-999"))


# ---- bad input ------------------------------------------------------------------------------

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-2, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["/no/such/file.jsonl", "../../etc", "tiny:gpt9", "pkg:nope", "{task}", "1e-3", "auto", "nf4"]),
    st.sampled_from(["@garbled", "@fieldless", "@badlabel"]),  # data folders written by the test
)


def data_folders(root: Path) -> dict[str, str]:
    """Malformed data: not JSON, rows without the task's fields, labels outside its classes."""
    contents = {
        "@garbled": '{"sentence": "fine", "label": 1}\n{oops\n',
        "@fieldless": '{"text": "fine", "label": 1}\n' * 40,
        "@badlabel": '{"sentence": "fine", "label": 9}\n' * 40,
    }
    for name, text in contents.items():
        folder = root / name.lstrip("@")
        folder.mkdir(exist_ok=True)
        for split in ("train", "validation"):
            (folder / f"{split}.jsonl").write_text(text)
    return {name: str(root / name.lstrip("@")) for name in contents}
KEYS = st.sampled_from(
    dotted_keys(Recipe) + [f"method.{k}" for k in dotted_keys(MezoConfig)]
    + ["method.rank", "optim.lrr", "extra", "train"] + ["data.path"] * 8  # files get extra weight
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=3))
def test_fuzzed_recipes_either_work_or_exit_2_naming_the_key_or_file(tiny, tmp_path, mutations):
    recipe = copy.deepcopy(tiny)
    folders = data_folders(tmp_path)
    for key, value in mutations:
        value = folders.get(value, value) if isinstance(value, str) else value
        *sections, leaf = key.split(".")
        node = recipe
        for part in sections:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[leaf] = value
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(path), "--dry-run"])
    assert result.exit_code in (0, 2), (mutations, result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        named = {k.split(".")[0] for k, _ in mutations} | {"recipe", "model", "data", ".jsonl", "run."}
        named |= {folder for folder in folders.values()}
        assert any(word in result.output for word in named), (mutations, result.output)


@pytest.mark.parametrize("key", ["method.n_queries", "method.max_queries"])
def test_an_absurd_query_count_is_refused_before_anything_is_allocated(tiny, tmp_path, key):
    """The fuzzer's find: n_queries 6007631511 reached the estimator and raised MemoryError."""
    leaf = key.split(".")[1]
    tiny["method"] = {"name": "mezo" if leaf == "n_queries" else "adazeta", leaf: 6007631511}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny))
    result = CliRunner().invoke(app, ["train", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert f"{key}:" in result.output and "between 1 and 4096" in " ".join(result.output.split())


def test_recipes_are_data_never_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\ndata: {{task: sst2}}\n')
    result = CliRunner().invoke(app, ["train", str(path), "--print-config"])
    assert result.exit_code == 2 and "not valid YAML" in result.output
    assert not marker.exists()


def test_a_run_name_cannot_write_outside_the_output_folder(tiny):
    tiny["run"]["name"] = "../escaped"
    with pytest.raises(Exception, match="must be a plain folder name"):
        recipe_from_dict(tiny)


def test_checkpoints_and_resume_use_no_pickle(tiny, monkeypatch):
    train(tiny)
    files = {p.suffix for p in (run_dir(tiny) / "checkpoints").rglob("*") if p.is_file()}
    assert files <= {".safetensors", ".json", ""}
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    import pickle

    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    tiny["checkpoint"]["resume"] = "auto"
    tiny["train"]["max_steps"] = 8
    train(tiny)


def test_remote_code_is_off_unless_asked_and_weights_must_be_safetensors(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zoft.config.schema import ModelConfig
    from zoft.models.loading import load_model
    from zoft.models.tiny import build_tiny

    model, tok = build_tiny("tiny:llama-16x1", 0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    seen = {}
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_model(ModelConfig(name_or_path=str(tmp_path / "m")), 0)
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True
    load_model(ModelConfig(name_or_path=str(tmp_path / "m"), trust_remote_code=True), 0)
    assert seen["trust_remote_code"] is True
    assert AutoTokenizer is not None
