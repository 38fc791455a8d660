"""End to end on CPU: the run directory, exact resume, Ctrl-C, dry runs, and real SST-2 files."""

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config.loader import recipe_from_dict
from zoft.engine.trainer import Trainer
from zoft.errors import ZoftError
from zoft.tracking.metrics import is_step, read_metrics

TRAIN_KEYS = ("step", "loss", "proj_grad", "seed", "lr")


def train(recipe: dict) -> dict:
    return Trainer(recipe_from_dict(copy.deepcopy(recipe))).run()


def run_dir(recipe: dict) -> Path:
    return Path(recipe["run"]["output_dir"]) / recipe["run"]["name"]


def final_weights(recipe: dict) -> dict:
    """The trained tensors of the run's checkpoint at its last step."""
    from safetensors.torch import load_file

    last = f"step_{recipe['train']['max_steps']:07d}"
    return load_file(run_dir(recipe) / "checkpoints" / last / "trainable.safetensors")


def train_copy(recipe: dict, name: str) -> dict:
    """Train a copy of `recipe` under another run name (the reference run of a comparison)."""
    other = copy.deepcopy(recipe)
    other["run"]["name"] = name
    train(other)
    return other


def assert_resume_is_exact(recipe: dict, stop_at: int = 3) -> None:
    """Stopping after `stop_at` steps and resuming gives an uninterrupted run's metrics and weights, bit for bit."""
    whole = train_copy(recipe, "whole")
    split = copy.deepcopy(recipe)
    split["run"]["name"] = "split"
    steps = split["train"]["max_steps"]
    split["train"]["max_steps"] = stop_at
    train(split)
    split["train"]["max_steps"] = steps
    split["checkpoint"]["resume"] = "auto"
    train(split)
    assert train_records(split) == train_records(whole)
    a, b = final_weights(whole), final_weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_records(recipe: dict) -> list[dict]:
    rows = read_metrics(run_dir(recipe) / "metrics.jsonl")
    return [{k: r[k] for k in TRAIN_KEYS} for r in rows if is_step(r)]


def test_run_directory_holds_everything_and_loads_with_from_pretrained(tiny):
    summary = train(tiny)
    root = run_dir(tiny)
    assert yaml.safe_load((root / "config.yaml").read_text())["optim"]["lr"] == 1e-3
    assert {"zoft", "torch", "transformers"} <= set(json.loads((root / "meta.json").read_text()))
    records = read_metrics(root / "metrics.jsonl")
    steps = [r for r in records if is_step(r)]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert {"step", "loss", "proj_grad", "seed", "lr", "mem_gib", "time_s"} <= set(steps[0])
    assert [r["step"] for r in records if r.get("split") == "dev"] == [0, 3, 6]
    evals = [r for r in records if "split" in r]
    assert all(r["mem_gib"] > 0 for r in evals)  # an evaluation's own peak, apart from the steps'
    assert summary["peak_mem_gib"] >= max(r["mem_gib"] for r in records if "mem_gib" in r) - 1e-3  # events have none
    ckpts = root / "checkpoints"
    assert (ckpts / "LATEST").read_text().strip() == "step_0000006"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000004", "step_0000006"]  # keep_last=2
    assert all((p / "DONE").is_file() for p in ckpts.glob("step_*")) and (ckpts / "best" / "DONE").is_file()
    assert (root / "eval" / "test_" f"step_{summary['best_step']:07d}.json").is_file()
    assert json.loads((root / "results.json").read_text())["test"] == summary["test"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(root / "model")
    tok = AutoTokenizer.from_pretrained(root / "model")
    assert model(**tok(["the film was great"], return_tensors="pt")).logits.shape[-1] == len(tok)


def test_test_each_scores_test_at_every_dev_evaluation_and_the_best_step_matches_the_summary(tiny):
    tiny["eval"].update(test_each=True, every=2)
    tiny["optim"]["lr"] = 5e-2  # dev accuracy moves, so the best step is not simply the first
    summary = train(tiny)
    records = read_metrics(run_dir(tiny) / "metrics.jsonl")
    dev = {r["step"]: r["accuracy"] for r in records if r.get("split") == "dev"}
    test = [r for r in records if r.get("split") == "test"]
    assert sorted(dev) == [0, 2, 4, 6] and [r["step"] for r in test[:4]] == [0, 2, 4, 6]
    # the curve's test score at the best dev step is the end-of-run score of the best checkpoint
    assert test[sorted(dev).index(summary["best_step"])]["accuracy"] == summary["test"]


def test_training_moves_the_weights_and_logs_a_finite_loss(tiny):
    train(tiny)
    rows = train_records(tiny)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert any(r["proj_grad"] != 0 for r in rows)


def test_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tiny):
    assert_resume_is_exact(tiny)


@pytest.mark.parametrize(
    "method, optim",
    [
        ({"name": "mezo"}, {"name": "adam", "lr": 1e-3}),
        ({"name": "lozo", "rank": 2, "lazy_interval": 2}, {"name": "momentum", "lr": 1e-3}),
        ({"name": "subzo", "rank": 2, "update_interval": 2}, {"lr": 1e-3}),
        ({"name": "tezo", "rank": 2, "refresh_interval": 4}, {"name": "adam", "lr": 1e-3}),
        ({"name": "adazeta", "max_queries": 3, "query_rate": 1.0}, {"lr": 1e-3}),
        ({"name": "fo"}, {"name": "adam", "lr": 1e-3}),
    ],
    ids=["mezo-adam", "lozo-m", "subzo", "tezo-adam", "adazeta", "fo-adam"],
)
def test_resume_keeps_each_methods_state_bit_identical(tiny, method, optim):
    tiny["method"], tiny["optim"] = method, optim
    assert_resume_is_exact(tiny)
    if method["name"] in ("lozo", "subzo", "tezo"):  # a stop where no evaluation or checkpoint falls:
        tiny["run"]["output_dir"] += "-stop5"  # how a low-rank step folds must not depend on what follows it
        assert_resume_is_exact(tiny, stop_at=5)


@pytest.mark.parametrize("method, optim", [
    ({"name": "mezo"}, {"name": "sgd", "lr": 1e-3}),
    ({"name": "mezo", "n_queries": 2}, {"name": "adam", "lr": 1e-3}),
    ({"name": "lozo", "rank": 2, "lazy_interval": 2}, {"name": "momentum", "lr": 1e-3}),
    ({"name": "subzo", "rank": 2, "update_interval": 2}, {"name": "sgd", "lr": 1e-3}),
    ({"name": "tezo", "rank": 2, "refresh_interval": 2}, {"name": "adam", "lr": 1e-3}),
    ({"name": "lozo", "rank": 2, "lazy_interval": 2, "path": "functional"}, {"name": "sgd", "lr": 1e-3}),
], ids=["mezo", "mezo-adam-q2", "lozo-m", "subzo", "tezo-adam", "lozo-functional"])
def test_replay_rebuilds_a_run_from_its_metrics_alone_bit_for_bit(tiny, method, optim):
    tiny["method"] = {**method, "eps": 1e-3, "restore": "copy"}  # copy: the perturbations leave no rounding behind
    tiny["optim"] = optim
    whole = train_copy(tiny, "whole")
    moved = copy.deepcopy(tiny)
    moved["run"]["name"] = "moved"
    moved["train"]["max_steps"] = 4
    train(moved)
    shutil.rmtree(run_dir(moved) / "checkpoints")  # what another machine gets: the run directory without weights
    logged = [r for r in read_metrics(run_dir(moved) / "metrics.jsonl") if is_step(r)]
    moved["train"]["max_steps"] = 6
    moved["checkpoint"].update(resume="auto", replay=True)
    train(moved)
    again = [r for r in read_metrics(run_dir(moved) / "metrics.jsonl") if is_step(r)]
    assert again[:4] == logged  # replayed, not recomputed: the first steps' records (times too) are the logged ones
    assert train_records(moved) == train_records(whole)
    a, b = final_weights(whole), final_weights(moved)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_evaluation_the_earlier_process_did_not_reach_is_made_on_resume(tiny):
    """Killed between step 3 and its evaluation (a machine taken away mid-evaluation): the replayed
    run evaluates step 3 before going on, as the uninterrupted run did."""
    tiny["eval"]["test_each"] = True
    whole = train_copy(tiny, "whole")
    cut = copy.deepcopy(tiny)
    cut["run"]["name"] = "cut"
    cut["train"]["max_steps"] = 3
    train(cut)
    shutil.rmtree(run_dir(cut) / "checkpoints")
    metrics = run_dir(cut) / "metrics.jsonl"
    rows = read_metrics(metrics)
    kept = [r for r in rows if not (r["step"] == 3 and r.get("split") == "test")]  # its test evaluation never ran
    metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
    cut["train"]["max_steps"] = 6
    cut["checkpoint"].update(resume="auto", replay=True)
    train(cut)
    evals = lambda recipe: [(r["step"], r["split"], r["accuracy"]) for r in read_metrics(run_dir(recipe) / "metrics.jsonl") if "split" in r]  # noqa: E731
    assert evals(cut) == evals(whole)  # once each: the cut evaluation's dev record made again, not twice
    assert (3, "test") in [e[:2] for e in evals(cut)]


def test_replay_of_a_thinned_metrics_file_stops_naming_the_missing_steps(tiny):
    train(tiny)
    metrics = run_dir(tiny) / "metrics.jsonl"
    shutil.rmtree(run_dir(tiny) / "checkpoints")
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines() if '"step": 2,' not in line))
    tiny["checkpoint"].update(resume="auto", replay=True)
    with pytest.raises(ZoftError, match="lacks the records of steps 2; every step's is needed"):
        train(tiny)


def test_replay_is_refused_for_first_order_and_without_resume(tiny, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**tiny, "method": {"name": "fo"}, "checkpoint": {"replay": True}}))
    result = CliRunner().invoke(app, ["train", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert "checkpoint.replay: replays this run's own metrics.jsonl" in result.output
    assert "checkpoint.replay: a first-order step" in " ".join(result.output.split())


def test_resume_refuses_a_recipe_that_changes_the_trajectory(tiny):
    train(tiny)
    tiny["checkpoint"]["resume"] = "auto"
    tiny["optim"]["lr"] = 0.5
    with pytest.raises(ZoftError) as info:
        train(tiny)
    assert info.value.problems == ["optim.lr: the run used 0.001, the recipe now says 0.5"]


def test_a_used_run_directory_is_not_overwritten_silently(tiny):
    train(tiny)
    with pytest.raises(ZoftError, match="already holds a run"):
        train(tiny)
    tiny["run"]["overwrite"] = True
    train(tiny)


def test_dry_run_writes_nothing(tiny, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny))
    result = CliRunner().invoke(app, ["train", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run ok" in result.output and "proj_grad" in result.output
    assert not run_dir(tiny).exists()


def test_ctrl_c_writes_a_checkpoint_and_resume_continues_from_it(tiny, tmp_path):
    tiny["train"]["max_steps"] = 100000
    tiny["checkpoint"]["every"] = 0
    tiny["eval"] = {"every": 0, "at_start": False}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny))
    proc = subprocess.Popen([sys.executable, "-m", "zoft", "train", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir(tiny) / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 20):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    latest = (run_dir(tiny) / "checkpoints" / "LATEST").read_text().strip()
    stopped = int(latest.split("_")[1])
    assert stopped >= 20 and "interrupted at step" in out

    result = CliRunner().invoke(app, ["train", str(path), f"train.max_steps={stopped + 3}", "checkpoint.resume=auto"])
    assert result.exit_code == 0, result.output
    steps = [r["step"] for r in train_records(tiny)]
    assert steps == list(range(1, stopped + 4))


def test_sst2_from_the_shared_files_trains_checkpoints_and_resumes(tiny, shared_data):
    tiny["data"] = {"task": "sst2", "path": str(shared_data / "sst2"), "num_train": 32, "num_dev": 8, "num_eval": 16}
    tiny["train"]["max_steps"] = 2
    summary = train(tiny)
    assert summary["steps"] == 2 and summary["test"] is not None
    tiny["train"]["max_steps"] = 4
    tiny["checkpoint"]["resume"] = "auto"
    train(tiny)
    assert [r["step"] for r in train_records(tiny)] == [1, 2, 3, 4]


def test_adazeta_with_a_derived_rate_refuses_a_longer_resume(tiny):
    tiny["method"] = {"name": "adazeta", "max_queries": 2}
    tiny["train"]["max_steps"] = 3
    train(tiny)
    tiny["train"]["max_steps"] = 6
    tiny["checkpoint"]["resume"] = "auto"
    with pytest.raises(ZoftError, match="train.max_steps"):
        train(tiny)
    tiny["method"]["query_rate"] = 0.5  # an explicit rate does not depend on max_steps
    tiny["checkpoint"]["resume"] = None
    tiny["run"]["overwrite"] = True
    train(tiny)


def test_carried_perturbations_change_no_bit_of_a_run(tiny, monkeypatch):
    """MeZO-SGD steps carry the next step's first perturbation except before an evaluation, a
    checkpoint or the end: metrics, evaluations and weights are those of a run that never carries."""
    from zoft.methods.mezo import MeZO

    tiny["train"]["max_steps"] = 10
    tiny["eval"]["every"], tiny["checkpoint"]["every"] = 4, 5
    carried = []
    finish = MeZO.finish

    def spying(self, step, grads, lr, pending, carry=False):
        carried.append(carry)
        return finish(self, step, grads, lr, pending, carry)

    monkeypatch.setattr(MeZO, "finish", spying)
    train(tiny)
    assert carried == [done not in (4, 5, 8, 10) for done in range(1, 11)]
    monkeypatch.setattr(MeZO, "can_carry", lambda self: False)
    plain = train_copy(tiny, "plain")
    measured = ("time_s", "mem_gib", "seconds")  # of the machine, not of the trajectory

    def rows(recipe):
        return [{k: v for k, v in row.items() if k not in measured} for row in read_metrics(run_dir(recipe) / "metrics.jsonl")]

    assert rows(tiny) == rows(plain)
    a, b = final_weights(tiny), final_weights(plain)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_during_a_carrying_step_checkpoints_clean_weights_one_step_later(tiny, monkeypatch):
    from zoft.engine.trainer import Interrupted

    tiny["train"]["max_steps"] = 8
    tiny["checkpoint"]["every"] = 0
    tiny["eval"] = {"every": 0, "at_start": False, "batch_size": 16}
    whole = train_copy(tiny, "whole")
    original = Trainer._train_step

    def interrupting(self, session, batcher, step, state, carry=False):
        record = original(self, session, batcher, step, state, carry)
        if step == 2:
            assert carry and session.method.carried == 3
            self.interrupted = True  # as the SIGINT handler does, mid-step
        return record

    monkeypatch.setattr(Trainer, "_train_step", interrupting)
    with pytest.raises(Interrupted) as stopped:
        train(tiny)
    assert stopped.value.step == 4  # step 3 had carried into step 4, which ran uncarried before the checkpoint
    monkeypatch.undo()
    tiny["checkpoint"]["resume"] = "auto"
    train(tiny)
    assert train_records(tiny) == train_records(whole)
    a, b = final_weights(tiny), final_weights(whole)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is reset and kept apart on a GPU only")
def test_a_steps_memory_leaves_out_the_evaluations_and_the_summary_keeps_the_larger(tiny):
    tiny["model"]["device"] = "cuda"
    tiny["train"]["batch_size"] = 2
    tiny["eval"]["batch_size"] = 512  # an evaluation far larger than a step
    tiny["train"]["cuda_graphs"] = False  # a recorded graph's pool stays allocated, and outweighs this toy evaluation
    summary = train(tiny)
    records = read_metrics(run_dir(tiny) / "metrics.jsonl")
    steps = [r["mem_gib"] for r in records if is_step(r)]
    evals = [r["mem_gib"] for r in records if "split" in r]
    assert max(steps) < min(evals)  # the steps after an evaluation do not carry its peak
    assert summary["peak_mem_gib"] == pytest.approx(max(evals), abs=1e-3)
