"""profile-memory on CPU: the analytic estimate against the bytes methods really keep, and the command."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config.loader import recipe_from_dict
from zoft.engine.memory import VARIANTS, estimate, forward_activations, meta_model, shape_of
from zoft.engine.profiling import method_for, synthetic_batch
from zoft.models.loading import load_model


@pytest.fixture
def shaped(tiny):
    tiny["model"] = {"config": "smollm2-135m", "dtype": "fp32", "device": "cpu"}
    tiny["method"] = {"name": "tezo", "rank": 4}
    return recipe_from_dict(tiny)


def kept_bases(method) -> dict[int, torch.Tensor]:
    """The bases a low-rank method keeps for their period (LowRankMethod.periodic), by identity."""
    kept = getattr(method, "_periodic", {}).values()  # MeZO and first-order keep none
    return {id(t): t for _, drawn in kept for t in (drawn if isinstance(drawn, tuple) else (drawn,))}


def test_weights_are_exact_and_the_meta_model_allocates_nothing(shaped):
    meta = meta_model(shaped.model)
    assert all(p.is_meta for p in meta.parameters())
    shape = shape_of(meta, batch=4, seq=32)
    est = estimate(shape, "mezo", "sgd")
    assert est.weights == sum(p.numel() * 4 for p in meta.parameters())  # fp32
    assert 134e6 < est.weights / 4 < 136e6  # SmolLM2-135M
    assert forward_activations(shape) == 4 * 32 * 3 * 1536 * 4  # gated MLP: 3 × ffn per token


@pytest.mark.parametrize("variant", ["mezo-m", "mezo-adam", "lozo-m", "subzo", "tezo-m", "tezo-adam", "fo"])
def test_estimated_state_equals_what_the_method_keeps(tiny, variant):
    tiny["model"] = {"name_or_path": "tiny:llama-32x2"}
    recipe = recipe_from_dict(tiny)
    model, _ = load_model(recipe.model, 0)
    params = list(model.named_parameters())
    name, optimizer = VARIANTS[variant]
    method = method_for(recipe, variant, params, 0)
    objective, batch = synthetic_batch(model.config.vocab_size, 2, 8, model.device)
    method.step(lambda: objective.loss(model, batch), 0, 1e-6)
    kept = sum(t.numel() * t.element_size() for t in method.state_dict().values() if t.dim())  # not bookkeeping scalars
    est = estimate(shape_of(model, 2, 8), name, optimizer, rank=getattr(method.cfg, "rank", 2))
    grads = est.weights if name == "fo" else 0  # first-order: gradients at the peak
    assert est.optimizer_state == kept + grads
    assert est.method_state == sum(t.numel() * t.element_size() for t in kept_bases(method).values())
    assert (est.method_state > 0) == (name in ("lozo", "subzo", "tezo"))


def test_tezo_adam_keeps_less_than_mezo_adam_and_mezo_keeps_nothing(shaped):
    shape = shape_of(meta_model(shaped.model), 16, 256)
    assert estimate(shape, "tezo", "adam", 4).optimizer_state < 1e-3 * estimate(shape, "mezo", "adam").optimizer_state
    assert estimate(shape, "mezo", "sgd").optimizer_state == 0


def test_the_command_writes_a_table_json_and_png_without_a_gpu(tmp_path, tiny):
    tiny["model"] = {"config": "opt-125m", "dtype": "bf16"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny))
    runner = CliRunner()
    result = runner.invoke(app, ["profile-memory", str(path), "--estimate-only", "--methods", "mezo,tezo-adam,fo"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "t"
    report = json.loads((out / "memory.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["forward", "mezo", "tezo-adam", "fo"]
    assert report["rows"][3]["estimate"]["peak"] > 4 * report["rows"][1]["estimate"]["weights"]
    assert (out / "memory.png").stat().st_size > 1000 and "tezo-adam" in result.output
    bad = runner.invoke(app, ["profile-memory", str(path), "--estimate-only", "--methods", "mezzo"])
    assert bad.exit_code == 2 and "unknown method 'mezzo'" in bad.output
    if not torch.cuda.is_available():
        no_gpu = runner.invoke(app, ["profile-memory", str(path), "--methods", "mezo"])
        assert no_gpu.exit_code == 2 and "--estimate-only" in no_gpu.output


@pytest.mark.parametrize("variant", ["lozo", "lozo-m", "subzo", "tezo", "tezo-adam"])
def test_the_functional_paths_extra_state_is_estimated_exactly(tiny, variant):
    """Bases (and TeZO's U, SubZO's P), the fp32 factor accumulators, and the copies the hooks read
    (B, the query's A, the z of the norms moved in place over a doubled batch)."""
    from zoft.engine.objective import BatchLoss

    name, optimizer = VARIANTS[variant]
    tiny["model"] = {"name_or_path": "tiny:llama-32x2"}
    tiny["method"] = {"name": name, "path": "functional"}
    recipe = recipe_from_dict(tiny)
    model, _ = load_model(recipe.model, 0)
    params = list(model.named_parameters())
    method = method_for(recipe, variant, params, 0, model)
    objective, batch = synthetic_batch(model.config.vocab_size, 2, 8, model.device)
    method.step(BatchLoss(objective, model, batch), 0, 1e-6)
    assert method.pairs(BatchLoss(objective, model, batch))
    kept = {id(t): t for t in [*method.functional._held.values(), *method.functional.acc.values()]}
    kept |= kept_bases(method)
    est = estimate(shape_of(model, 2, 8), name, optimizer, rank=method.cfg.rank, functional=True)
    assert est.method_state == sum(t.numel() * t.element_size() for t in kept.values())


def test_quantized_linear_layers_are_estimated_at_their_packed_size(shaped):
    meta = meta_model(shaped.model)
    full, nf4 = shape_of(meta, 4, 32), shape_of(meta, 4, 32, quantization="nf4")
    linear = sum(m.weight.numel() for m in meta.modules() if type(m) is torch.nn.Linear and m is not meta.get_output_embeddings())
    saved = forward_estimate_weights(full) - forward_estimate_weights(nf4)
    assert saved == pytest.approx(linear * (4 - 0.5625))  # fp32 → 4 bits + an fp32 absmax per 64


def forward_estimate_weights(shape):
    from zoft.engine.memory import forward_estimate

    return forward_estimate(shape).weights
