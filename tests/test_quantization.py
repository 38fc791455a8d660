"""model.quantization: a frozen int8 / nf4 base (bitsandbytes, which runs on CPU), adapters or
functional low-rank deltas trained over it, resumed exactly, evaluated with the deltas."""

from __future__ import annotations


import pytest
import torch

pytest.importorskip("bitsandbytes")

from zoft.config.loader import recipe_from_dict
from zoft.engine import checkpoint
from zoft.engine.trainer import build_session
from zoft.errors import ZoftError

from test_methods_train import batch_loss, fixed_batch
from test_train import assert_resume_is_exact, run_dir, train

# bitsandbytes' CPU 4-bit kernels need rows of at least one 64-element block
MODEL = {"name_or_path": "tiny:llama-64x2"}


@pytest.fixture
def quantized(tiny):
    tiny["model"] = {**MODEL, "quantization": "nf4"}
    tiny["method"] = {"name": "tezo", "rank": 2}
    tiny["optim"] = {"lr": 2e-3}
    return tiny


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("method, optim", [
    ({"name": "tezo", "rank": 2}, "sgd"),
    ({"name": "lozo", "rank": 2, "lazy_interval": 3}, "sgd"),
    ({"name": "lozo", "rank": 2, "lazy_interval": 3}, "momentum"),
    ({"name": "tezo", "rank": 2}, "adam"),
])
def test_a_low_rank_delta_trains_over_a_quantized_base_that_never_changes(tiny, kind, method, optim):
    session, loss_fn = fixed_batch(
        tiny, 40, model={**MODEL, "quantization": kind}, method=method, optim={"name": optim, "lr": 2e-3 if optim != "adam" else 1e-3}
    )
    assert type(session.model.model.layers[0].mlp.up_proj).__name__ in ("Linear4bit", "Linear8bitLt")
    assert session.method.functional is not None  # chosen automatically: the base cannot be written
    before = batch_loss(loss_fn)  # (bitsandbytes repacks 4-bit weights for CPU at the first forward)
    packed = {n: p.clone() for n, p in session.params if not p.dtype.is_floating_point}
    assert packed
    for step in range(40):
        session.method.step(loss_fn, step, session.method.optim.lr)
    after = batch_loss(loss_fn)
    assert after < before - 0.05, (before, after)
    assert all(torch.equal(p, packed[n]) for n, p in session.params if n in packed)
    assert any(n in packed for n in (k[: -len(".A")] for k in session.method.deltas() if k.endswith(".A")))


def test_quantized_runs_resume_bit_identically_across_basis_changes(quantized):
    quantized["method"] = {"name": "lozo", "rank": 2, "lazy_interval": 2}  # merged-out terms pile up
    assert_resume_is_exact(quantized)


def test_a_checkpoint_over_a_quantized_base_evaluates_with_its_deltas(quantized):
    quantized["checkpoint"]["resume"] = "auto"
    train(quantized)
    folder = run_dir(quantized) / "checkpoints" / "best"
    live = build_session(recipe_from_dict(quantized))
    checkpoint.load(folder, live.params, live.method)
    plain = build_session(recipe_from_dict(quantized), with_method=False)
    checkpoint.load_weights(folder, plain.params, model=plain.model)  # what zoft eval does
    base = build_session(recipe_from_dict(quantized), with_method=False)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(plain.model(ids).logits, live.model(ids).logits, rtol=1e-4, atol=1e-4)
        assert float((plain.model(ids).logits - base.model(ids).logits).abs().max()) > 1e-3
    assert (run_dir(quantized) / "model" / checkpoint.DELTAS).is_file()


def test_lora_adapters_train_over_an_nf4_base(quantized):
    quantized["params"] = {"mode": "lora", "lora_r": 2}
    quantized["method"] = {"name": "mezo"}
    summary = train(quantized)
    assert summary["steps"] == 6


@pytest.mark.parametrize("change, key", [
    ({"method": {"name": "mezo"}}, "method.name"),
    ({"method": {"name": "adazeta"}}, "method.name"),
    ({"method": {"name": "fo"}}, "method.name"),
    ({"method": {"name": "lozo", "path": "inplace"}}, "method.path"),
    ({"optim": {"lr": 1e-3, "weight_decay": 0.1}}, "optim.weight_decay"),
])
def test_combinations_that_cannot_work_over_a_quantized_base_are_refused(quantized, change, key):
    quantized.update(change)
    with pytest.raises(ZoftError) as err:
        recipe_from_dict(quantized)
    assert any(p.startswith(key) for p in err.value.problems), err.value.problems
