"""The functional path (SPEC.md): hooks instead of weight writes, a doubled batch for ±ε, updates
in factor space merged at basis changes; equal to the in-place path up to rounding (fp32, CPU)."""

from __future__ import annotations


import pytest
import torch

from zoft.config.loader import recipe_from_dict
from zoft.engine import checkpoint
from zoft.engine.trainer import build_session
from zoft.errors import ZoftError

from test_methods_train import fixed_batch
from test_train import assert_resume_is_exact, run_dir, train

VARIANTS = {
    "lozo": ({"name": "lozo", "rank": 2, "lazy_interval": 2}, {"lr": 1e-2}),
    "lozo-m": ({"name": "lozo", "rank": 2, "lazy_interval": 2}, {"name": "momentum", "lr": 1e-2}),
    "subzo": ({"name": "subzo", "rank": 2, "update_interval": 2}, {"lr": 1e-3}),
    "tezo": ({"name": "tezo", "rank": 3, "refresh_interval": 3}, {"lr": 1e-2}),
    "tezo-adam": ({"name": "tezo", "rank": 3}, {"name": "adam", "lr": 1e-3}),
}


def session_for(tiny, method, optim, model="tiny:opt-32x2", **extra):
    return fixed_batch(tiny, model={"name_or_path": model}, method={**method, **extra}, optim=optim)


def effective_weights(session) -> dict[str, torch.Tensor]:
    """W + the terms the method still holds in factor space."""
    deltas = session.method.deltas()
    out = {}
    for name, p in session.params:
        w = p.detach().clone()
        if f"{name}.A" in deltas:
            w.view(w.shape[0], -1).addmm_(deltas[f"{name}.A"], deltas[f"{name}.B"].T)
        out[name] = w
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", ["tiny:opt-32x2", "tiny:llama-32x2"])
def test_the_functional_path_follows_the_in_place_trajectory(tiny, variant, model):
    """Same projected gradients and weights, steps across basis changes included (biases, layer and
    RMS norms, a tied embedding)."""
    runs = {}
    for path in ("inplace", "functional"):
        session, loss_fn = session_for(tiny, *VARIANTS[variant], model=model, path=path, paired_forward="never")
        grads = [session.method.step(loss_fn, step, session.method.optim.lr).grads[0] for step in range(5)]
        runs[path] = grads, effective_weights(session)
    quantum = torch.finfo(torch.float32).eps / 1e-3  # ulp(L ≈ 1)/ε: a loss's rounding, in a projected gradient
    assert runs["functional"][0] == pytest.approx(runs["inplace"][0], rel=1e-3, abs=4 * quantum)
    for name, w in runs["inplace"][1].items():
        torch.testing.assert_close(runs["functional"][1][name], w, rtol=1e-4, atol=2e-5, msg=name)


def test_momentum_over_matrices_of_different_ranks_follows_the_in_place_trajectory(tiny, tmp_path):
    """Ranks from a rank file: each matrix's update scaled by its own 1/r in the flat factors."""
    import json

    session, _ = session_for(tiny, *VARIANTS["lozo-m"], path="inplace")
    matrices = [name for name, p in session.params if p.ndim == 2]
    rank_file = tmp_path / "ranks.json"
    rank_file.write_text(json.dumps({"ranks": {name: 1 + k % 3 for k, name in enumerate(matrices)}, "default": 2}))
    method, optim = VARIANTS["lozo-m"]
    runs = {}
    for path in ("inplace", "functional"):
        session, loss_fn = session_for(tiny, {**method, "rank": str(rank_file)}, optim, path=path, paired_forward="never")
        lozo, before = session.method, effective_weights(session)
        assert len({lozo.rank(i) for i in lozo.ranks}) == 3
        grads = [lozo.step(loss_fn, 0, lozo.optim.lr).grads[0]]
        after = effective_weights(session)
        for index in lozo.ranks:  # step 0: N = (1 − β) g U, W += −η/r · N Vᵀ
            name, w = lozo.params[index][0], lozo.like(index)
            u, v = lozo.u(index, w, 0, 0), lozo.v(index, w, 0)
            expected = -lozo.optim.lr / lozo.rank(index) * (1 - lozo.optim.beta_values()[0]) * grads[0] * (u @ v.T)
            torch.testing.assert_close((after[name] - before[name]).view_as(expected), expected, rtol=1e-3, atol=1e-7, msg=name)
        grads += [lozo.step(loss_fn, step, lozo.optim.lr).grads[0] for step in range(1, 5)]
        runs[path] = grads, effective_weights(session)
    quantum = torch.finfo(torch.float32).eps / 1e-3
    assert runs["functional"][0] == pytest.approx(runs["inplace"][0], rel=1e-3, abs=4 * quantum)
    for name, w in runs["inplace"][1].items():
        torch.testing.assert_close(runs["functional"][1][name], w, rtol=1e-4, atol=2e-5, msg=name)


@pytest.mark.parametrize("model", ["tiny:opt-32x2", "tiny:llama-32x2"])
def test_a_doubled_batch_gives_both_losses_of_two_forwards(tiny, model):
    """One forward over [batch; batch] with +ε on the first half and −ε on the second (biases
    corrected, norms recomputed) equals the two separate forwards."""
    results = {}
    for paired in ("never", "always"):
        session, loss_fn = session_for(tiny, *VARIANTS["tezo"], model=model, path="functional", paired_forward=paired)
        results[paired] = [session.method.step(loss_fn, step, 1e-2) for step in range(3)]
    for a, b in zip(results["always"], results["never"]):
        assert a.grads == pytest.approx(b.grads, rel=1e-3, abs=1e-4)  # fp32 rounding / 2ε
        assert a.loss == pytest.approx(b.loss, rel=1e-5)


def test_the_hooks_read_the_same_buffers_from_step_to_step(tiny):
    """What a CUDA graph of the hooked forward relies on: across steps and basis changes, every
    tensor the hooks read (A, B, the biases' z, the in-place tensors' shifts, A_acc) stays where it
    was, its value changing, and the state a graph is kept by changes only with the sign of ε."""
    session, loss_fn = session_for(tiny, *VARIANTS["lozo"], path="functional")
    path, seen = session.method.functional, []
    pair = loss_fn.pair

    def watched_pair():
        shifts = [t for z in path.shifts.values() for t in (z if isinstance(z, tuple) else (z,))]
        read = [path.direction, *path.basis.values(), *path.vectors.values(), *shifts, *path.acc.values()]
        assert shifts and path.vectors  # OPT: its learned positions recomputed, its biases corrected
        seen.append(([t.data_ptr() for t in read], [t.clone() for t in read], path.state()))
        return pair()

    loss_fn.pair = watched_pair
    for step in range(3):  # the basis changes at step 2
        session.method.step(loss_fn, step, 1e-2)
    assert len(seen) == 3
    assert seen[0][0] == seen[1][0] == seen[2][0]
    assert seen[0][2] == seen[1][2] == seen[2][2]
    for k, values in enumerate(zip(*(values for _, values, _ in seen))):  # values do change: A_acc
        assert not all(torch.equal(values[0], v) for v in values[1:]), k  # at step 1, B at step 2
    path.set_direction(None, 1e-3, scale=1.0)
    assert path.state() != seen[0][2]


@pytest.mark.parametrize("variant", ["lozo", "subzo", "tezo"])
@pytest.mark.parametrize("model", ["tiny:opt-32x2", "tiny:llama-32x2"])
def test_a_querys_factors_and_a_periods_bases_are_kept_once(tiny, variant, model):
    """The hooks' directions are the method's A as it made them, not a copy, and what the method
    keeps of a period's B is the hooks' copy (OPT-1.3B at SubZO's rank 8: 7 MiB each at a step's
    peak); OPT's learned positions, moved in place, come after the hooked matrices."""
    session, loss_fn = session_for(tiny, *VARIANTS[variant], model=model, path="functional")
    method, path = session.method, session.method.functional
    step = 0
    while int(method.acc_period) == 0:  # until a second period's bases are on the hooks
        method.step(loss_fn, step, 1e-2)
        step += 1
    period = int(method.acc_period)
    assert method.period(step) == period
    made = [method.factors(index, method.like(index), step, 0)[0] for index in path.order]
    directions = method.directions(step, 0)
    assert directions.data_ptr() == made[0].data_ptr()
    assert torch.equal(directions, torch.cat([a.reshape(-1) for a in made]))
    for index in path.hooked:
        kept = method.basis_of(index, method.like(index), period)
        assert kept.data_ptr() == path.basis[index].data_ptr() and kept.shape == path.basis[index].shape


def test_held_buffers_take_every_value_and_follow_a_new_shape(tiny):
    """`_hold` skips its layout check for a tensor it checked in one of its last two calls (a
    step's z and the next one's alternate between two rooms): the value is still copied each
    call into the same buffer; a tensor of another shape gets a new buffer, and a tensor checked
    against the old one is checked again."""
    session, _ = session_for(tiny, *VARIANTS["lozo"], path="functional")
    path, key = session.method.functional, ("vector", 0)
    a, b = torch.zeros(4), torch.zeros(4)
    places = set()
    for value in range(3):
        for t in (a, b):
            t.fill_(value + (t is b) / 2)
            held = path._hold({key: t})[key]
            assert torch.equal(held, t)
            places.add(held.data_ptr())
    assert len(places) == 1
    generation = path.generation
    assert path._hold({key: torch.ones(6)})[key].shape == (6,)
    assert path.generation != generation
    b.fill_(7.0)  # held the call before the new shape
    held = path._hold({key: b})[key]
    assert held.shape == (4,) and torch.equal(held, b)


def test_no_matrix_is_written_during_a_step_and_merges_happen_at_basis_changes(tiny):
    session, loss_fn = session_for(tiny, *VARIANTS["lozo"], path="functional")
    hooked = session.method.functional.hooked  # OPT's learned positions are not: they move in place
    matrices = {n: p for i, (n, p) in enumerate(session.params) if i in hooked}
    before = {n: p.clone() for n, p in matrices.items()}
    session.method.step(loss_fn, 0, 1e-2)
    session.method.step(loss_fn, 1, 1e-2)  # V is the same for steps 0 and 1: W untouched
    assert all(torch.equal(p, before[n]) for n, p in matrices.items())
    assert session.method.deltas()
    session.method.step(loss_fn, 2, 1e-2)  # a new V: the first period's updates go into W
    assert all(not torch.equal(p, before[n]) for n, p in matrices.items())


@pytest.mark.parametrize("variant", ["lozo", "tezo-adam"])
def test_functional_runs_resume_bit_identically(tiny, variant):
    tiny["model"] = {"name_or_path": "tiny:opt-32x2"}
    tiny["method"], tiny["optim"] = {**VARIANTS[variant][0], "path": "functional"}, VARIANTS[variant][1]
    assert_resume_is_exact(tiny)


def test_a_checkpoint_evaluates_with_its_factor_space_terms(tiny):
    tiny["model"] = {"name_or_path": "tiny:opt-32x2"}
    tiny["method"] = {**VARIANTS["lozo"][0], "lazy_interval": 100, "path": "functional"}
    tiny["optim"] = {"lr": 1e-1}
    tiny["checkpoint"]["resume"] = "auto"
    train(tiny)
    folder = run_dir(tiny) / "checkpoints" / "step_0000006"
    assert (folder / checkpoint.DELTAS).is_file()  # nothing merged yet: the terms travel beside W
    trained = build_session(recipe_from_dict(tiny))
    checkpoint.load(folder, trained.params, trained.method)  # W and the factor-space state
    plain = build_session(recipe_from_dict(tiny), with_method=False)
    checkpoint.load_weights(folder, plain.params)  # what zoft eval does: W with the terms written in
    ids = torch.tensor([[5, 6, 7, 8]], device=next(plain.model.parameters()).device)
    with torch.no_grad():
        base = build_session(recipe_from_dict(tiny), with_method=False).model(ids).logits
        torch.testing.assert_close(plain.model(ids).logits, trained.model(ids).logits, rtol=1e-4, atol=5e-4)
        assert float((plain.model(ids).logits - base).abs().max()) > 1e-2


def test_recipes_asking_for_what_the_functional_path_cannot_do_are_refused(tiny):
    with pytest.raises(ZoftError, match="optim.weight_decay"):
        session_for(tiny, {"name": "tezo", "path": "functional"}, {"lr": 1e-3, "weight_decay": 0.1})


@pytest.mark.parametrize("variant", ["lozo-m", "tezo-adam"])
def test_switching_paths_mid_run_keeps_the_effective_weights(tiny, variant):
    """use_path: leaving the functional path merges its factor-space terms into W, coming back
    starts fresh accumulators; the model computes the same function throughout."""
    session, loss_fn = session_for(tiny, *VARIANTS[variant], path="functional", paired_forward="never")
    method = session.method
    for step in range(3):
        method.step(loss_fn, step, method.optim.lr)
    assert method.deltas() and int(method.state_dict()["path"]) == 1
    before = effective_weights(session)
    with torch.no_grad():
        loss = float(loss_fn())
    method.use_path("inplace")
    assert method.functional is None and not method.deltas() and int(method.state_dict()["path"]) == 0
    for name, w in effective_weights(session).items():
        torch.testing.assert_close(w, before[name], rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():
        assert float(loss_fn()) == pytest.approx(loss, rel=1e-5)  # no hooks left: W itself holds the terms
    method.step(loss_fn, 3, method.optim.lr)
    method.use_path("functional")
    method.step(loss_fn, 4, method.optim.lr)
    assert method.deltas() and int(method.state_dict()["path"]) == 1


def test_auto_times_both_paths_on_the_first_batch_and_a_resume_keeps_the_choice(tiny):
    """What method.path=auto does on a GPU, driven on CPU: the trainer times an estimate on each
    path, logs both, goes on with the faster, and a resumed run reads the choice back."""
    from zoft.engine.trainer import Batcher, Trainer
    from zoft.tracking.metrics import read_metrics

    tiny["method"] = {**VARIANTS["lozo"][0], "eps": 1e-3, "path": "functional"}
    trainer = Trainer(recipe_from_dict(tiny))
    trainer._prepare_run_dir()
    session = build_session(trainer.recipe)
    session.method.path_state.fill_(-1)  # as `auto` leaves it on a GPU
    assert session.method.paths() == ["functional", "inplace"]
    trainer._choose_path(session, Batcher(session.train, 4, 0), 0)
    event = [r for r in read_metrics(run_dir(tiny) / "metrics.jsonl") if r.get("event") == "path"][0]
    assert event[f"{event['path']}_ms"] == min(event["functional_ms"], event["inplace_ms"])  # logged to 0.1 ms: ties
    assert (session.method.functional is not None) == (event["path"] == "functional")
    assert session.method.paths() == []  # chosen once
    state = {k: v.clone() for k, v in session.method.state_dict().items()}
    fresh = build_session(trainer.recipe).method  # a resumed run's method, built with the recipe's path
    fresh.load_state_dict(state)
    assert (fresh.functional is not None) == (event["path"] == "functional") and fresh.paths() == []


def test_replay_follows_the_path_the_run_logged(tiny):
    """A replayed run takes the path its metrics.jsonl says `auto` chose, instead of timing anew."""
    import json
    import shutil

    from safetensors.torch import load_file

    tiny["method"] = {**VARIANTS["lozo"][0], "eps": 1e-3, "path": "functional"}
    tiny["train"]["max_steps"] = 3
    train(tiny)
    metrics = run_dir(tiny) / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 0, "event": "path", "path": "inplace"}) + "\n" + metrics.read_text())
    shutil.rmtree(run_dir(tiny) / "checkpoints")
    tiny["train"]["max_steps"] = 5
    tiny["checkpoint"].update(resume="auto", replay=True)
    train(tiny)
    state = load_file(run_dir(tiny) / "checkpoints" / "step_0000005" / "method.safetensors")
    assert int(state["path"]) == 0 and not any(k.startswith("acc.") for k in state)
