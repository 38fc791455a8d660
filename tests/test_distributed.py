"""Data-parallel ZO on CPU: 2 gloo processes under torchrun equal one process with the same global batch."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_train import run_dir, train, train_copy, train_records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny(tiny):
    """Gloo ranks on the CPU, and their one-process reference there too, even beside a GPU."""
    tiny["model"]["device"] = "cpu"
    return tiny


def torchrun(recipe: dict, path, nproc: int) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
               "-m", "zoft", "train", str(path)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("method", [{"name": "mezo"}, {"name": "tezo", "rank": 2}])
def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(tiny, tmp_path, method):
    tiny["method"] = method
    tiny["train"].update(max_steps=8, batch_size=8)
    tiny["eval"] = {"every": 4, "at_start": True, "test": True}
    single = train_copy(tiny, "single")

    tiny["run"]["name"] = "ddp"
    done = torchrun(tiny, tmp_path / "ddp.yaml", 2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    a = load_file(run_dir(single) / "checkpoints" / "step_0000008" / "trainable.safetensors")
    b = load_file(run_dir(tiny) / "checkpoints" / "step_0000008" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # equal up to the rounding of a mean taken in two halves
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    one, two = train_records(single), train_records(tiny)
    assert [r["step"] for r in two] == list(range(1, 9))  # rank 0 alone wrote, once per step
    for r1, r2 in zip(one, two):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        assert r2["proj_grad"] == pytest.approx(r1["proj_grad"], rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("method", [{"name": "mezo", "n_queries": 4}, {"name": "adazeta", "max_queries": 3, "query_rate": 1.0, "query_shrink": 1.0}])
def test_ranks_spreading_the_queries_equal_one_process_doing_them_all(tiny, tmp_path, method):
    """AdaZeta-style: each rank evaluates its queries on the whole batch; one all-reduce of q numbers.
    Exact with restore=copy: in-place restores leave rounding drift that depends on how many
    queries a process evaluated before (one process: all earlier ones; a rank: its own)."""
    tiny["method"] = {**method, "restore": "copy"}
    tiny["train"].update(max_steps=6, batch_size=4, spread_queries=True)
    tiny["data"]["num_train"] = 12  # 3 steps per epoch: AdaZeta's query count grows within the run
    tiny["eval"] = {"every": 0, "at_start": False, "test": False}
    single = train_copy(tiny, "single")
    tiny["run"]["name"] = "spread"
    done = torchrun(tiny, tmp_path / "spread.yaml", 2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = train_records(single), train_records(tiny)
    assert [len(r["proj_grad"]) if isinstance(r["proj_grad"], list) else 1 for r in two] == \
           [len(r["proj_grad"]) if isinstance(r["proj_grad"], list) else 1 for r in one]
    assert max(len(r["proj_grad"]) if isinstance(r["proj_grad"], list) else 1 for r in two) > 1
    for r1, r2 in zip(one, two):
        assert r2["proj_grad"] == pytest.approx(r1["proj_grad"], rel=1e-6, abs=1e-9)
    a = load_file(run_dir(single) / "checkpoints" / "step_0000006" / "trainable.safetensors")
    b = load_file(run_dir(tiny) / "checkpoints" / "step_0000006" / "trainable.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7)


def test_resume_on_a_different_number_of_ranks_keeps_the_trajectory(tiny, tmp_path):
    tiny["train"].update(max_steps=8, batch_size=8)
    tiny["eval"] = {"every": 0, "at_start": False, "test": False}
    whole = train_copy(tiny, "whole")
    tiny["train"]["max_steps"] = 4
    done = torchrun(tiny, tmp_path / "a.yaml", 2)  # 4 steps on 2 ranks
    assert done.returncode == 0, done.stderr[-3000:]
    tiny["train"]["max_steps"] = 8
    tiny["checkpoint"]["resume"] = "auto"
    train(tiny)  # then 4 more on one process
    for r1, r2 in zip(train_records(whole), train_records(tiny)):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(tiny, tmp_path):
    tiny["train"]["batch_size"] = 3
    done = torchrun(tiny, tmp_path / "odd.yaml", 2)
    assert done.returncode != 0
    assert "train.batch_size: 3 does not split evenly over 2 ranks" in done.stdout + done.stderr
