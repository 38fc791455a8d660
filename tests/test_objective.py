"""Candidate scoring: left-padded batches must score exactly as each row alone, on both archs."""

import pytest
import torch

from zoft.data.tasks import Example
from zoft.engine.objective import OBJECTIVES, Encoded, candidate_scores, collate, encode
from zoft.models.tiny import build_tiny


def reference_scores(model, items):
    """Mean log-prob of each candidate's tokens, one unpadded sequence at a time."""
    out = []
    for it in items:
        row = []
        for opt in it.options:
            ids = torch.tensor([it.prompt + opt])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            n = len(opt)
            positions = range(len(it.prompt) - 1, len(it.prompt) - 1 + n)
            row.append(sum(logp[p, ids[0, p + 1]] for p in positions) / n)
        out.append(torch.stack(row))
    return out


@pytest.mark.parametrize("arch", ["tiny:llama-16x2", "tiny:opt-16x2"])
def test_padded_batch_scores_equal_unpadded_reference(arch):
    model, tok = build_tiny(arch, seed=3)
    model.eval()
    examples = [
        Example("the plot was dull . It was", (" terrible", " great"), 0),
        Example("a much longer sentence about a really wonderful film that we saw . It was", (" terrible", " great"), 1),
        Example("Suppose it rains Can we infer that", (" Yes", " No", " Maybe but longer"), 2),
    ]
    items = encode(tok, examples, max_length=64, kind="classify")
    assert len(set(len(it.prompt) for it in items)) == 3  # real left padding happens
    with torch.no_grad():
        scores = candidate_scores(model, collate(items, tok.pad_token_id))
        expected = reference_scores(model, items)
    assert torch.isinf(scores[0, 2]) and torch.isinf(scores[1, 2])  # absent third candidate
    torch.testing.assert_close(scores[2], expected[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores[:2, :2], torch.stack(expected[:2]), rtol=1e-4, atol=1e-5)


def test_loss_is_candidate_cross_entropy_and_accuracy_is_argmax():
    model, tok = build_tiny("tiny:llama-16x1", seed=0)
    examples = [Example(f"film {i} was good . It was", (" terrible", " great"), i % 2) for i in range(6)]
    items = encode(tok, examples, 32, "classify")
    batch = collate(items, tok.pad_token_id)
    objective = OBJECTIVES["classify"]
    with torch.no_grad():
        scores = candidate_scores(model, batch)
        loss = objective.loss(model, batch)
    manual = -torch.log_softmax(scores, -1)[torch.arange(6), batch.labels].mean()
    torch.testing.assert_close(loss, manual)
    result = objective.evaluate(model, tok, items, batch_size=4)
    assert result["accuracy"] == float((scores.argmax(-1) == batch.labels).float().mean())


def test_prompts_are_truncated_from_the_left():
    _, tok = build_tiny("tiny:llama-16x1", seed=0)
    long = Example("word " * 100 + "It was", (" great",), 0)
    (item,) = encode(tok, [long], max_length=10, kind="classify")
    assert len(item.prompt) == 10
    assert tok.decode(item.prompt).endswith("It was")


def test_choice_eval_loss_from_one_forward_equals_the_gold_token_training_loss():
    model, tok = build_tiny("tiny:llama-16x1", seed=0)
    model.eval()
    examples = [
        Example("my body cast a shadow because", (" the sun rose", " b"), 0),
        Example("a longer prompt about the day so", (" x y", " the grass was cut short"), 1),
        Example("q", (" m", " n"), 1),
    ]
    items = encode(tok, examples, 64, "choice")
    objective = OBJECTIVES["choice"]
    with torch.no_grad():
        right, loss = objective.score_chunk(model, items, tok.pad_token_id, torch.device("cpu"))
        expected = objective.loss(model, objective.train_batch(items, tok.pad_token_id))
        scores = candidate_scores(model, collate(items, tok.pad_token_id))
    assert loss == pytest.approx(float(expected), rel=1e-6)
    assert right == int((scores.argmax(-1) == torch.tensor([0, 1, 1])).sum())


@pytest.mark.parametrize("arch, kind", [("tiny:llama-16x2", "classify"), ("tiny:opt-16x2", "choice"), ("tiny:bert-16x2", "encoder")])
def test_padding_a_batch_further_leaves_its_loss_as_it_was(arch, kind):
    """CUDA graphs round a batch's length up to a bucket: the extra masked tokens change nothing."""
    model, tok = build_tiny(arch, seed=1, num_labels=2 if kind == "encoder" else 0)
    model.eval()
    examples = [
        Example("the plot was dull . It was", (" terrible", " great"), 0),
        Example("a longer sentence about a film that we saw . It was", (" terrible", " great but long"), 1),
    ]
    objective = OBJECTIVES[kind]
    batch = objective.train_batch(encode(tok, examples, 64, kind), tok.pad_token_id)
    wider = batch.padded_to(batch.input_ids.shape[1] + 13)
    assert wider.input_ids.shape[1] == batch.input_ids.shape[1] + 13
    with torch.no_grad():
        torch.testing.assert_close(objective.loss(model, wider), objective.loss(model, batch), rtol=1e-5, atol=1e-6)


def test_candidate_scores_place_each_row_under_its_example_when_counts_differ():
    """scores_of finds a row by counting the candidates before it (no boolean indexing, so a graph can hold it)."""
    from zoft.engine.objective import scores_of

    items = [Encoded((1,), ((2,), (3,), (4,)), 0), Encoded((1,), ((2,),), 0), Encoded((1,), ((5,), (6,)), 1)]
    batch = collate(items, 0)
    sums, counts = torch.arange(1.0, 7.0), torch.tensor([1.0, 1, 1, 1, 2, 2])
    expected = torch.tensor([[1, 2, 3], [4, -torch.inf, -torch.inf], [2.5, 3, -torch.inf]])
    torch.testing.assert_close(scores_of(sums, counts, batch), expected)
