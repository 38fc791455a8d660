"""analyze-rank: spectra against numpy's SVD, the streaming sketch, and the rank file round trip."""

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from zoft.analysis.rank import TemporalSketch, normalized_spectrum, subspace_overlap, threshold_rank, top_subspace
from zoft.cli import app
from zoft.config.loader import recipe_from_dict
from zoft.engine.objective import BatchLoss
from zoft.engine.trainer import Batcher, build_session
from zoft.errors import ZoftError


def test_spectrum_and_threshold_rank_match_numpy():
    g = torch.randn(12, 7, generator=torch.Generator().manual_seed(0)) @ torch.diag(torch.tensor([5.0, 1, 0.5, 0.01, 0, 0, 0]))
    ours = normalized_spectrum(g, 10)
    sv = np.linalg.svd(g.numpy(), compute_uv=False)
    np.testing.assert_allclose(ours[:7].numpy(), sv / sv[0], rtol=1e-4, atol=1e-6)
    assert ours[7:].tolist() == [0, 0, 0]
    assert threshold_rank(ours, 0.02) == int((sv / sv[0] >= 0.02).sum()) == 3


def test_exact_temporal_spectrum_matches_numpy_and_the_sketch_approximates_it():
    gen = torch.Generator().manual_seed(1)
    base = [torch.randn(40, 30, generator=gen) for _ in range(3)]  # gradients living in 3 directions
    grads = [sum(torch.randn(1, generator=gen) * b for b in base) + 0.01 * torch.randn(40, 30, generator=gen) for _ in range(25)]
    exact, sketched = TemporalSketch((40, 30), 0, 0, torch.device("cpu")), TemporalSketch((40, 30), 24, 0, torch.device("cpu"))
    for g in grads:
        exact.add(g)
        sketched.add(g)
    stacked = np.stack([(g / g.norm()).flatten().numpy() for g in grads])
    sv = np.linalg.svd(stacked, compute_uv=False)
    np.testing.assert_allclose(exact.spectrum().numpy(), sv / sv[0], rtol=1e-4, atol=1e-6)
    assert threshold_rank(exact.spectrum(), 0.05) == 3
    assert threshold_rank(sketched.spectrum(), 0.05) == 3  # same temporal rank from 24×24 sketches
    assert len(sketched.rows[0]) == 24 * 24


def test_subspace_overlap():
    u = top_subspace(torch.randn(20, 10, generator=torch.Generator().manual_seed(2)), 3)
    assert subspace_overlap(u, u) == pytest.approx(1.0, rel=1e-5)  # fp32: the SVD's basis is orthonormal to ~1e-6
    assert subspace_overlap(u, torch.linalg.qr(torch.randn(20, 3))[0]) < 0.8


def test_the_command_records_the_true_gradient_spectra_and_writes_a_usable_rank_file(tiny, tmp_path):
    tiny["model"] = {"name_or_path": "tiny:llama-32x2"}
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny))
    result = CliRunner().invoke(app, ["analyze-rank", str(recipe_path), "--steps", "4", "--top-k", "8",
                                      "--layers", "*q_proj.weight,*down_proj.weight", "--sketch", "0"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "t" / "rank"
    data = json.loads((out / "rank_study.json").read_text())
    names = [layer["name"] for layer in data["layers"]]
    assert names == ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                     "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    # step 0's spectrum equals numpy's SVD of the autograd gradient at the initial weights
    tiny["model"]["device"] = "cpu"  # the reference gradient goes to numpy
    session = build_session(recipe_from_dict(tiny), with_method=False)
    weight = dict(session.model.named_parameters())[names[0]]
    weight.requires_grad_(True)
    batch = session.objective.train_batch(Batcher(session.train, 4, 0).batch(0), session.pad_id)
    (grad,) = torch.autograd.grad(BatchLoss(session.objective, session.model, batch)(), [weight])
    sv = np.linalg.svd(grad.numpy(), compute_uv=False)
    np.testing.assert_allclose(data["layers"][0]["spectra"][0], (sv / sv[0])[:8], rtol=1e-3, atol=1e-5)
    for name in ("spectra.csv", "layers.png", "steps.png", "temporal.png", "overlap.png"):
        assert (out / name).stat().st_size > 0
    ranks = json.loads((out / "ranks.json").read_text())
    assert set(ranks["ranks"]) == set(names) and ranks["default"] == max(ranks["ranks"].values())

    # round trip: the rank file drives TeZO's per-layer ranks
    tiny["method"] = {"name": "tezo", "rank": str(out / "ranks.json")}
    tiny["optim"] = {"name": "adam", "lr": 1e-3}
    method = build_session(recipe_from_dict(tiny)).method
    for index, (name, p) in enumerate(method.params):
        if p.ndim == 2:
            expected = min(ranks["ranks"].get(name, ranks["default"]), *p.shape)
            assert method.rank(index) == expected
            assert method.state_dict()[f"m.{name}"].numel() == expected


def test_a_bad_rank_file_is_named(tiny, tmp_path):
    bad = tmp_path / "ranks.json"
    bad.write_text('{"ranks": {"x": 0}, "default": 2}')
    tiny["method"] = {"name": "lozo", "rank": str(bad)}
    with pytest.raises(ZoftError, match="every rank must be an integer >= 1"):
        recipe_from_dict(tiny)
    tiny["method"]["rank"] = str(tmp_path / "missing.json")
    with pytest.raises(ZoftError, match="not a readable rank file"):
        recipe_from_dict(tiny)
