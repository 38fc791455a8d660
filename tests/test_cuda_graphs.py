"""CUDA graphs of the training loss (GPU only): the losses of eager forwards, weight changes seen."""

import copy

import pytest
import torch

from zoft.data.tasks import Example
from zoft.engine.graphs import BUCKET, LossGraphs, one_stream, recording_stream
from zoft.engine.objective import OBJECTIVES, encode
from zoft.models.tiny import build_tiny
from zoft.tracking.metrics import read_metrics

from test_train import final_weights, run_dir, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def sentiment_batch(tok, prompts):
    items = encode(tok, [Example(p, (" terrible", " great"), i % 2) for i, p in enumerate(prompts)], 256, "classify")
    return OBJECTIVES["classify"].train_batch(items, tok.pad_token_id).to("cuda")


def test_a_graphed_loss_equals_the_eager_one_and_sees_in_place_weight_changes():
    model, tok = build_tiny("tiny:llama-32x2", seed=0)
    model.cuda().eval()
    objective = OBJECTIVES["classify"]
    graphs = LossGraphs(objective, model)
    short = sentiment_batch(tok, ["a dull plot . It was", "fine acting . It was"])
    other = sentiment_batch(tok, ["so boring . It was", "a delight . It was"])
    long = sentiment_batch(tok, ["a film " * 30 + ". It was", "ok . It was"])
    weight = model.model.layers[0].mlp.up_proj.weight
    with torch.inference_mode():
        before = graphs.loss(short)
        torch.testing.assert_close(before, objective.loss(model, short), rtol=1e-5, atol=1e-6)
        weight.add_(0.05 * torch.randn_like(weight))  # as a perturbation does: in place
        after = graphs.loss(short)
        assert not torch.equal(after, before)
        torch.testing.assert_close(after, objective.loss(model, short), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(graphs.loss(other), objective.loss(model, other), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(graphs.loss(long), objective.loss(model, long), rtol=1e-5, atol=1e-6)
    assert short.input_ids.shape[1] <= BUCKET < long.input_ids.shape[1]
    assert len(graphs.recorded) == 2  # `short` and `other` share a bucket, `long` has its own


def test_eager_forwards_and_recordings_in_one_stream_share_a_cublas_workspace():
    """As training runs: eager work on the recording stream, so that a recording takes no cuBLAS
    workspace of its own (32 MiB on an H100) beside the eager forwards' one."""
    model, tok = build_tiny("tiny:llama-32x2", seed=0)
    model.cuda().eval()
    objective, graphs = OBJECTIVES["classify"], LossGraphs(OBJECTIVES["classify"], model)
    batch = sentiment_batch(tok, ["a dull plot . It was", "fine acting . It was"])
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()  # those of earlier tests' streams: each stream then takes its own anew
    with one_stream(torch.device("cuda")), torch.inference_mode():
        assert torch.cuda.current_stream() == recording_stream(torch.cuda.current_device())
        eager = objective.loss(model, batch)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        replayed = graphs.loss(batch)
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() - before < 2**20  # the held inputs and output
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keys", [
    {"method": {"name": "mezo", "eps": 1e-3}},
    {"method": {"name": "mezo", "eps": 1e-3}, "optim": {"name": "adam", "lr": 1e-3}},
    {"method": {"name": "lozo", "rank": 2, "path": "inplace", "eps": 1e-3}},
])
def test_training_with_graphs_follows_eager_training(tiny, keys):
    """Same seed, same batches: the projected gradients of graphed and eager steps agree to float rounding."""
    tiny["model"]["device"] = "cuda"
    tiny["model"]["name_or_path"] = "tiny:llama-32x2"
    tiny["train"]["max_steps"] = 20
    for section, values in keys.items():
        tiny[section].update(values)
    runs = {}
    for setting, name in ((True, "on"), (False, "off")):
        recipe = copy.deepcopy(tiny)
        recipe["run"]["name"] = name
        recipe["train"]["cuda_graphs"] = setting
        train(recipe)
        runs[name] = read_metrics(run_dir(recipe) / "metrics.jsonl")
    assert {"step": 0, "event": "cuda_graphs", "used": True} in runs["on"]
    assert not any(r.get("event") == "cuda_graphs" for r in runs["off"])
    grads = {s: torch.tensor([r["proj_grad"] for r in rows if "proj_grad" in r]) for s, rows in runs.items()}
    assert len(grads["on"]) == 20
    torch.testing.assert_close(grads["on"], grads["off"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("model,method,optimizer,batch", [
    ("opt-32x2", {"name": "lozo", "rank": 2, "lazy_interval": 5}, "sgd", 4),
    ("llama-32x2", {"name": "subzo", "rank": 2, "update_interval": 5}, "sgd", 4),
    ("opt-32x2", {"name": "tezo", "rank": 2, "refresh_interval": 5}, "adam", 16),
    ("llama-32x2", {"name": "lozo", "rank": 2, "lazy_interval": 5}, "momentum", 16),
], ids=["lozo-opt-doubled", "subzo-llama-doubled", "tezo-adam-opt", "lozo-m-llama"])
def test_functional_training_with_graphs_follows_eager_training(tiny, model, method, optimizer, batch):
    """The hooks read kept buffers, so their graphs replay new directions, accumulators and bases
    (a basis changes every 5 steps): batches of 4 take one doubled forward (OPT's biases corrected,
    its norms and learned positions recomputed), batches of 16 two forwards at ±ε."""
    tiny["model"].update(device="cuda", name_or_path=f"tiny:{model}")
    tiny["method"].update(method, path="functional", eps=1e-2)
    tiny["optim"]["name"] = optimizer
    tiny["train"].update(max_steps=16, batch_size=batch)
    tiny["eval"]["every"], tiny["checkpoint"]["every"] = 8, 8
    runs = {}
    for setting in (True, False):
        recipe = copy.deepcopy(tiny)
        recipe["run"]["name"] = f"graphs-{setting}"
        recipe["train"]["cuda_graphs"] = setting
        train(recipe)
        rows = read_metrics(run_dir(recipe) / "metrics.jsonl")
        runs[setting] = (rows, torch.tensor([r["proj_grad"] for r in rows if "proj_grad" in r]), final_weights(recipe))
    assert {"step": 0, "event": "cuda_graphs", "used": True} in runs[True][0]
    assert len(runs[True][1]) == 16 and runs[True][1].abs().min() > 0
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=1e-3, atol=1e-4)
    weights = runs[True][2]
    assert all(torch.allclose(weights[k], runs[False][2][k], rtol=1e-4, atol=1e-6) for k in weights)


def test_choosing_the_path_with_graphs_records_each_paths_forward(tiny):
    """`method.path: auto` times both paths on the first batch, switching hooks on and off: each
    switch starts a new generation of graphs, and the run goes on with the faster path's."""
    tiny["model"].update(device="cuda", name_or_path="tiny:opt-32x2")
    tiny["method"].update(name="lozo", rank=2, path="auto")
    tiny["train"].update(cuda_graphs=True, max_steps=4)
    train(tiny)
    rows = read_metrics(run_dir(tiny) / "metrics.jsonl")
    assert any(r.get("event") == "path" for r in rows)
    assert sum("proj_grad" in r for r in rows) == 4


def test_carried_perturbations_on_the_gpu_change_no_bit_of_a_run(tiny, monkeypatch):
    """The compiled two-term kernel (fused FMA, round to nearest even) and graphed forwards: a run
    whose MeZO steps carry their successors' perturbations equals one that never carries."""
    from zoft.methods.mezo import MeZO

    tiny["model"].update(device="cuda", name_or_path="tiny:llama-128x2", dtype="bf16")  # its embedding: a kernel pass
    tiny["method"]["noise"] = "triton"
    tiny["train"]["max_steps"] = 12
    tiny["eval"]["every"], tiny["checkpoint"]["every"] = 4, 6
    runs = {}
    for carry in (True, False):
        recipe = copy.deepcopy(tiny)
        recipe["run"]["name"] = f"carry-{carry}"
        monkeypatch.setattr(MeZO, "can_carry", lambda self, carry=carry: carry and self.plain_sgd())
        train(recipe)
        rows = read_metrics(run_dir(recipe) / "metrics.jsonl")
        runs[carry] = ([(r.get("loss"), r.get("proj_grad"), r.get("accuracy")) for r in rows], final_weights(recipe))
    assert runs[True][0] == runs[False][0]
    assert all(torch.equal(runs[True][1][k], runs[False][1][k]) for k in runs[True][1])


@pytest.mark.parametrize("method", [
    {"name": "lozo", "rank": 2, "lazy_interval": 5},
    {"name": "subzo", "rank": 2, "update_interval": 5},
    {"name": "tezo", "rank": 2, "refresh_interval": 5},
], ids=["lozo", "subzo", "tezo"])
def test_low_rank_steps_in_three_passes_follow_four_pass_steps_on_the_gpu(tiny, method):
    """In place with graphed forwards, evaluations and checkpoints between: steps that fold the
    last restore into the update's addmm give the projected gradients and weights of steps that
    restore by copy and update apart, to fp32 rounding."""
    tiny["model"].update(device="cuda", name_or_path="tiny:llama-32x2")
    tiny["method"].update(method, path="inplace", eps=1e-2)
    tiny["train"]["max_steps"] = 12
    tiny["eval"]["every"], tiny["checkpoint"]["every"] = 4, 6
    runs = {}
    for restore in ("arithmetic", "copy"):
        recipe = copy.deepcopy(tiny)
        recipe["run"]["name"] = restore
        recipe["method"]["restore"] = restore
        train(recipe)
        rows = read_metrics(run_dir(recipe) / "metrics.jsonl")
        runs[restore] = (torch.tensor([r["proj_grad"] for r in rows if "proj_grad" in r]), final_weights(recipe))
    torch.testing.assert_close(runs["arithmetic"][0], runs["copy"][0], rtol=1e-3, atol=1e-3)
    weights = runs["arithmetic"][1]
    assert all(torch.allclose(weights[k], runs["copy"][1][k], rtol=1e-4, atol=1e-6) for k in weights)
