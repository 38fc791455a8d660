"""params.mode prefix and tt_adapter: what trains, their inits, TT algebra, resume, saving, eval."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from zoft.cli import app
from zoft.config.loader import recipe_from_dict
from zoft.config.schema import ParamsConfig
from zoft.engine import checkpoint
from zoft.engine.trainer import build_session
from zoft.models.params import trainable
from zoft.models.tiny import build_tiny
from zoft.models.tt_adapter import TTMatrix, load_tt_adapter, tt_modes

from conftest import TINY
from test_train import assert_resume_is_exact, run_dir, train

MODES = {"prefix": {"lr": 1e-2}, "tt_adapter": {"lr": 100.0}}  # tiny random bases: adapters see small activations
ARCHS = ["tiny:llama-32x2", "tiny:opt-32x2"]
CORES = len(tt_modes(32) + tt_modes(8))  # of each adapter matrix, hidden 32 <-> adapter_dim 8
TT_TENSORS = 2 * 2 * 2 * CORES  # layers × (attention, MLP) × (down, up) × cores


def with_mode(recipe: dict, mode: str) -> dict:
    """The tiny recipe on a 2-layer llama, training `mode` (method.eps 1e-2: prefix rows are O(1))."""
    recipe["model"] = {"name_or_path": "tiny:llama-32x2"}
    recipe["params"] = {"mode": mode, "adapter_dim": 8}
    recipe["method"]["eps"] = 1e-2
    recipe["optim"] = dict(MODES[mode])
    return recipe


@pytest.fixture(params=list(MODES))
def moded(tiny, request):
    return with_mode(tiny, request.param)


@pytest.fixture(scope="module", params=list(MODES))
def trained(request, tmp_path_factory):
    """One finished run per mode, shared by the tests that only read it."""
    recipe = with_mode(copy.deepcopy(TINY), request.param)
    recipe["run"]["output_dir"] = str(tmp_path_factory.mktemp(request.param))
    train(recipe)
    return recipe


def on_cpu(recipe: dict) -> dict:
    """A copy of `recipe` whose model loads on the CPU, beside the CPU-built references."""
    return {**recipe, "model": {**recipe["model"], "device": "cpu"}}


def base_model(arch: str):
    """The tiny model a run of seed 0 starts from, in eval mode as zoft loads it (OPT has dropout)."""
    base, tok = build_tiny(arch, 0)
    return base.eval(), tok


def prompt(tok):
    """Two prompts, the first left-padded, with zoft's position ids."""
    ids = torch.tensor([[tok.pad_token_id] * 2 + [5, 6, 7], [3, 4, 5, 6, 7]])
    mask = (ids != tok.pad_token_id).long()
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


# ---- tensor-train algebra ----------------------------------------------------------------------
def test_tt_modes_factor_any_size_into_balanced_modes():
    assert tt_modes(4096) == [16, 16, 16] and tt_modes(64) == [4, 4, 4] and tt_modes(576) == [8, 8, 9]
    assert tt_modes(13) == [13] and tt_modes(2 * 97) == [2, 97] and tt_modes(1) == [1]


@pytest.mark.parametrize("m, n", [(576, 64), (64, 576), (13, 7), (97, 12), (4096, 64), (1, 5)])
def test_tt_svd_at_full_rank_reconstructs_the_dense_matrix(m, n):
    weight = torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(m))
    tt = TTMatrix(m, n, rank=10**6).double()
    tt.factorize(weight)
    a, b = tt.blocks()
    torch.testing.assert_close(a @ b, weight, rtol=0, atol=1e-10)


@pytest.mark.parametrize("m, n", [(576, 64), (30, 17), (13, 7)])
def test_fast_forward_equals_x_times_the_full_matrix(m, n):
    torch.manual_seed(0)
    tt = TTMatrix(m, n, rank=5).double()
    for core in tt.cores:
        torch.nn.init.normal_(core)
    full = tt.cores[0]
    for core in tt.cores[1:]:  # every core contracted in turn: an independent dense reference
        full = torch.tensordot(full, core, dims=1)
    x = torch.randn(3, 4, m, dtype=torch.float64)
    torch.testing.assert_close(tt(x), x @ full.reshape(m, n))


# ---- initialisation -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_tt_adapters_start_as_the_identity(arch):
    base, tok = base_model(arch)
    ids, mask, pos = prompt(tok)
    with torch.no_grad():
        before = base(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        model, params = trainable(base, ParamsConfig(mode="tt_adapter", adapter_dim=8), 0)
        after = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.equal(before, after)
    assert len(params) == TT_TENSORS and all(name.startswith("adapters.") for name, _ in params)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_starts_as_the_keys_and_values_of_random_tokens(arch):
    """The prefixed model equals the base model run on the init tokens followed by the prompt."""
    base, tok = base_model(arch)
    tokens = torch.randint(base.config.vocab_size, (1, 3), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        cache = base(input_ids=tokens, use_cache=True).past_key_values
    model, params = trainable(base, ParamsConfig(mode="prefix", prefix_tokens=3), 7)
    assert [name for name, _ in params] == ["prompt_encoder.default.embedding.weight"]
    prefix = model.get_prompt(1)
    for mine, real in zip(prefix.layers, cache.layers):
        assert torch.equal(mine.keys, real.keys) and torch.equal(mine.values, real.values)
    ids, mask, pos = prompt(tok)
    with torch.no_grad():
        prefixed = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=3, use_cache=False).logits
        whole = torch.cat([tokens.expand(2, -1), ids], 1)
        ones = torch.ones(2, 3, dtype=torch.long)
        reference = base(input_ids=whole, attention_mask=torch.cat([ones, mask], 1),
                         position_ids=torch.cat([torch.arange(3).expand(2, -1), pos + 3], 1), logits_to_keep=3).logits
    torch.testing.assert_close(prefixed, reference)


@pytest.mark.parametrize("mode", list(MODES))
def test_generate_scores_its_first_token_as_the_training_forward_does(mode):
    """SQuAD is scored by greedy decoding: the mode must act the same under generate."""
    base, tok = base_model("tiny:llama-32x2")
    ids, mask, pos = prompt(tok)
    with torch.no_grad():
        before = base(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
        model, params = trainable(base, ParamsConfig(mode=mode, adapter_dim=8), 0)
        for _, p in params:  # trained-looking values: no adapter at its identity
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        forward = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False).logits
    torch.testing.assert_close(out.logits[0], forward[:, -1])
    assert not torch.allclose(forward, before)


def test_smollm2_shape_trainable_counts_are_the_documented_ones():
    from zoft.config.schema import ModelConfig
    from zoft.engine.memory import meta_model

    counts = {}
    for mode in MODES:
        _, params = trainable(meta_model(ModelConfig(config="smollm2-135m")), ParamsConfig(mode=mode), 0)
        counts[mode] = sum(p.numel() for _, p in params)
    assert counts == {"prefix": 57_600, "tt_adapter": 78_120}  # docs/models.md


# ---- training, checkpoints, saving, eval ----------------------------------------------------------
def test_only_the_modes_tensors_train_and_are_checkpointed(trained):
    saved = load_file(run_dir(trained) / "checkpoints" / "step_0000006" / "trainable.safetensors")
    if trained["params"]["mode"] == "prefix":
        start = build_session(recipe_from_dict(on_cpu(trained)), with_method=False).params
        assert list(saved) == ["prompt_encoder.default.embedding.weight"]
        assert not torch.equal(saved["prompt_encoder.default.embedding.weight"], start[0][1])
    else:
        assert all(k.startswith("adapters.") and ".cores." in k for k in saved) and len(saved) == TT_TENSORS
        assert float(saved[f"adapters.0.mlp.up.cores.{CORES - 1}"].abs().sum()) > 0  # moved from zero


def test_the_saved_model_reloads_and_reproduces_the_trained_logits(trained):
    from peft import PeftModel

    folder = run_dir(trained) / "model"
    base, tok = base_model("tiny:llama-32x2")
    if trained["params"]["mode"] == "prefix":
        loaded = PeftModel.from_pretrained(base, folder)
    else:
        assert json.loads((folder / "tt_adapter_config.json").read_text())["adapter_dim"] == 8
        loaded = load_tt_adapter(base, folder)
    session = build_session(recipe_from_dict(on_cpu(trained)), with_method=False)
    checkpoint.load_weights(run_dir(trained) / "checkpoints" / "best", session.params)
    ids, mask, pos = prompt(tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask, position_ids=pos).logits,
                                   session.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits)


def test_eval_of_a_run_applies_the_mode(trained):
    scores = {}
    for which in ("none", "latest"):
        result = CliRunner().invoke(app, ["eval", str(run_dir(trained)), "--checkpoint", which, "--split", "dev"])
        assert result.exit_code == 0, result.output
        scores[which] = json.loads((run_dir(trained) / "eval" / f"toy_sentiment_dev_{which}.json").read_text())["loss"]
    assert scores["none"] != scores["latest"]


@pytest.mark.parametrize("mode", ["lora", "tt_adapter"])
def test_encoder_modes_train_the_new_head_and_reload_with_it(mode, tiny, shared_data):
    tiny["model"] = {"name_or_path": "tiny:bert-32x2", "encoder_head": "linear"}
    tiny["data"] = {"task": "trec", "path": str(shared_data / "trec"), "num_train": 32, "num_dev": 8, "num_eval": 8}
    tiny["params"] = {"mode": mode, "adapter_dim": 8, "lora_targets": ["query", "value"]}
    tiny["optim"]["lr"] = 1e-1
    train(tiny)
    saved = load_file(run_dir(tiny) / "checkpoints" / "best" / "trainable.safetensors")
    head = [k for k in saved if ".classifier." in f".{k}"]
    assert head and len(head) < len(saved)  # the head and the adapters, not the base
    base, tok = build_tiny("tiny:bert-32x2", 0, 6)
    assert not torch.equal(saved[head[0]], base.classifier.weight)  # the head moved
    if mode == "lora":
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(base.eval(), run_dir(tiny) / "model")
    else:
        loaded = load_tt_adapter(base.eval(), run_dir(tiny) / "model")
    session = build_session(recipe_from_dict(on_cpu(tiny)), with_method=False)
    checkpoint.load_weights(run_dir(tiny) / "checkpoints" / "best", session.params)
    batch = tok(["how far is the moon", "who wrote it"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, session.model(**batch).logits)


@pytest.mark.parametrize("method, optim", [({"name": "mezo", "eps": 1e-2}, {"lr": 1e-2}),
                                           ({"name": "tezo", "rank": 2, "eps": 1e-2}, {"name": "adam", "lr": 1e-3})],
                         ids=["mezo", "tezo-adam"])
def test_runs_resume_bit_identically(moded, method, optim):
    moded["method"], moded["optim"] = method, optim
    assert_resume_is_exact(moded)


# ---- bad recipes --------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    (["params.mode=prefix", "params.prefix_tokens=0"], "params.prefix_tokens: must be >= 1"),
    (["params.mode=tt_adapter", "params.tt_rank=0"], "params.tt_rank: must be >= 1"),
    (["params.mode=tt_adapter", "params.adapter_dim=0"], "params.adapter_dim: must be >= 1"),
    (["params.mode=prefix", "model.name_or_path=tiny:bert", "data.task=sst5"], "params.mode: prefix needs a causal LM"),
])
def test_bad_keys_exit_2_naming_the_key(overrides, key, tmp_path):
    result = CliRunner().invoke(app, ["train", "quickstart", f"run.output_dir={tmp_path}", "--dry-run", *overrides])
    assert result.exit_code == 2, result.output
    assert key in " ".join(result.output.split()) and "Traceback" not in result.output
