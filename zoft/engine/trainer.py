"""The training loop: a validated recipe in, a run directory out. Knows nothing of the CLI."""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from zoft import __version__
from zoft.config.loader import dump_recipe, recipe_to_dict
from zoft.config.schema import Recipe
from zoft.data.loading import sample_splits, with_demonstrations
from zoft.data.tasks import TASKS, Task
from zoft.engine import checkpoint
from zoft.engine.distributed import init_world
from zoft.engine.graphs import LossGraphs, one_stream
from zoft.engine.memory import Peaks
from zoft.engine.objective import OBJECTIVES, BatchLoss, Encoded, Objective, encode
from zoft.engine.report import Reporter
from zoft.engine.rng import stream_seed
from zoft.engine.schedule import lr_at
from zoft.errors import ZoftError
from zoft.methods import METHODS, Method, ZOMethod
from zoft.models.label_head import EncoderHead
from zoft.models.loading import load_model
from zoft.models.params import trainable
from zoft.tracking.metrics import MetricsLog, is_step, read_metrics

# keys that shape the trajectory: a resumed run must not change them
FROZEN_ON_RESUME = ("run.seed", "model", "params", "data", "method", "optim", "train.batch_size")
REPLAY = "replay"  # _prepare_run_dir: no checkpoint, but metrics.jsonl to replay (checkpoint.replay)


class RunStopped(Exception):
    """A guard stopped the run cleanly (after writing a checkpoint): the lines say what to change."""

    def __init__(self, problems: list[str], title: str):
        self.problems, self.title = problems, title
        super().__init__(f"{title}: " + "; ".join(problems))


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the run after writing a checkpoint."""

    def __init__(self, step: int, folder: Path | None):
        self.step, self.folder = step, folder
        super().__init__(f"interrupted at step {step}")


@dataclass
class Session:
    """Everything a recipe builds: the model, its trainable tensors, the method and the data."""

    recipe: Recipe
    task: Task
    model: torch.nn.Module
    tokenizer: object
    params: list[tuple[str, torch.Tensor]]
    method: Method | None
    train: list[Encoded]
    dev: list[Encoded]
    test: list[Encoded]

    @property
    def objective(self) -> Objective:
        return OBJECTIVES[self.task.kind]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    graphs: LossGraphs | None = None  # set by the trainer when train.cuda_graphs allows them

    def batch_loss(self, items: list[Encoded], reduce=lambda t: t) -> BatchLoss:
        """The training loss of `items` as one batch on the model's device (`reduce`: over ranks),
        replayed from CUDA graphs when the session has them and the method's forward allows it."""
        batch = self.objective.train_batch(items, self.pad_id).to(self.device)
        graphs = self.graphs if self.graphs is not None and self.method.forward_state() is not None else None
        return BatchLoss(self.objective, self.model, batch, reduce, graphs)


def label_head_chosen(choice: str | None, task: Task) -> bool:
    """Whether `model.encoder_head: choice` gives `task` the label head (None: a run made before
    the key existed, which had the linear head)."""
    return task.kind == "encoder" and (choice == "labels" or (choice == "auto" and bool(task.label_texts)))


def encoder_head(recipe: Recipe, task: Task) -> EncoderHead | None:
    """The classifier an encoder task asks for (`model.encoder_head`); None for the LM tasks."""
    if task.kind != "encoder":
        return None
    return EncoderHead(task.num_labels, task.label_texts if label_head_chosen(recipe.model.encoder_head, task) else ())


def prepare_model(recipe: Recipe, seed: int, head: EncoderHead | None = None):
    """(model, tokenizer, trained tensors) as the recipe's model and params sections say."""
    model, tokenizer = load_model(recipe.model, seed, head)
    model, params = trainable(model, recipe.params, seed)
    return model, tokenizer, params


def build_session(recipe: Recipe, with_method: bool = True, prepared=None) -> Session:
    """Model, data and (unless only evaluating) the method that a recipe describes; `prepared`
    is a (model, tokenizer, trained tensors) to reuse across tasks."""
    seed = recipe.run.seed
    task = TASKS.get(recipe.data.task, "data.task")
    model, tokenizer, params = prepared or prepare_model(recipe, seed, encoder_head(recipe, task))
    data_seed = recipe.data.seed if recipe.data.seed is not None else seed
    splits = sample_splits(recipe.data, data_seed)
    method = None
    if with_method:
        method = METHODS.get(recipe.method.name, "method.name")(
            params,
            recipe.method,
            recipe.optim,
            seed,
            steps_per_epoch=max(1, -(-len(splits.train) // recipe.train.batch_size)),
            max_steps=recipe.train.max_steps,
            model=model,
        )
    shots = recipe.eval.icl_shots
    enc = lambda examples: encode(tokenizer, examples, recipe.data.max_length, task.kind)  # noqa: E731
    dev, test = (enc(with_demonstrations(s, splits.train, shots, data_seed)) for s in (splits.dev, splits.test))
    return Session(recipe, task, model, tokenizer, params, method, enc(splits.train), dev, test)


class Batcher:
    """Batch of step t = items [t·B, (t+1)·B) of a stream of seeded per-epoch permutations.

    Stateless: the batch depends on the step alone, so a resumed run sees the same data.
    """

    def __init__(self, items: list[Encoded], batch_size: int, seed: int):
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self._epoch, self._order = -1, np.arange(0)

    def batch(self, step: int) -> list[Encoded]:
        out = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, len(self.items))
            if epoch != self._epoch:
                rng = np.random.RandomState(stream_seed(self.seed, epoch) % 2**32)
                self._epoch, self._order = epoch, rng.permutation(len(self.items))
            out.append(self.items[self._order[offset]])
        return out


def run_dir_of(recipe: Recipe) -> Path:
    resume = recipe.checkpoint.resume
    if resume not in (None, "auto"):
        return Path(resume).expanduser()
    return Path(recipe.run.output_dir).expanduser() / recipe.run.name


def dry_run(recipe: Recipe) -> dict:
    """Build everything and run one ±ε forward pair on the first batch; write nothing."""
    session = build_session(recipe)
    loss_fn = session.batch_loss(Batcher(session.train, recipe.train.batch_size, recipe.run.seed).batch(0))
    if isinstance(session.method, ZOMethod):
        result = session.method.estimate(loss_fn, 0)  # perturbs and restores: no update
        loss, grads = result.loss, result.grads
    else:
        with torch.inference_mode():
            loss, grads = float(loss_fn()), []
    return {
        "trainable_params": sum(p.numel() for _, p in session.params),
        "train/dev/test": f"{len(session.train)}/{len(session.dev)}/{len(session.test)}",
        "loss": loss,
        "proj_grad": grads,
        "device": str(session.device),
    }


class Trainer:
    def __init__(self, recipe: Recipe, reporter: Reporter | None = None):
        self.recipe = recipe
        self.world = init_world(recipe.model.device)
        if self.world.size > 1:
            self._check_distributed()
        self.reporter = (reporter or Reporter()) if self.world.is_main else Reporter()
        self.run_dir = run_dir_of(recipe)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.world.is_main)
        self.interrupted = False

    def _check_distributed(self) -> None:
        r, size = self.recipe, self.world.size
        problems = []
        if r.train.batch_size % size and not r.train.spread_queries:
            problems.append(f"train.batch_size: {r.train.batch_size} does not split evenly over {size} ranks")
        if r.method.name == "fo":
            problems.append("method.name: fo averages no gradients across ranks; run it in one process")
        if r.model.device_map is not None:
            problems.append("model.device_map: one process spreads a model over GPUs; do not combine it with torchrun")
        if r.checkpoint.replay:
            problems.append("checkpoint.replay: replay in one process, then continue with torchrun from its checkpoint")
        if problems:
            raise ZoftError(problems, title="cannot run data-parallel")

    # ---- run directory -------------------------------------------------------------------
    def _prepare_run_dir(self) -> Path | str | None:
        """Create or reuse the run directory (rank 0); the checkpoint to resume from, REPLAY, or None."""
        if self.world.is_main:
            resume_from = self._prepare_run_dir_main()
        self.world.barrier()
        if not self.world.is_main:
            resume_from = checkpoint.newest(self.ckpt_root) if self.recipe.checkpoint.resume else None
        return resume_from

    def _prepare_run_dir_main(self) -> Path | str | None:
        recipe, run_dir = self.recipe, self.run_dir
        checkpoint.recover(self.ckpt_root)
        resume_from = checkpoint.newest(self.ckpt_root) if recipe.checkpoint.resume else None
        if resume_from is not None:
            self._check_resume_config()
            return resume_from
        if recipe.checkpoint.replay and (run_dir / "metrics.jsonl").is_file():
            self._check_resume_config()
            return REPLAY
        if recipe.checkpoint.resume not in (None, "auto"):
            raise ZoftError(f"checkpoint.resume: {run_dir} holds no complete checkpoint", title="cannot resume")
        if (run_dir / "config.yaml").exists() and not (recipe.run.overwrite or recipe.checkpoint.resume == "auto"):
            raise ZoftError(
                f"run.name: {run_dir} already holds a run; continue it with checkpoint.resume=auto "
                "or start over with run.overwrite=true",
                title="run directory in use",
            )
        for stale in ("checkpoints", "eval", "model", "metrics.jsonl", "results.json"):
            target = run_dir / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        return None

    def _check_resume_config(self) -> None:
        saved_path = self.run_dir / "config.yaml"
        if not saved_path.exists():
            return
        saved, now = _flatten(yaml.safe_load(saved_path.read_text())), _flatten(recipe_to_dict(self.recipe))
        task = TASKS.get(self.recipe.data.task, "data.task")
        for flat in (saved, now):  # the head each run gets, not the key's spelling: LM tasks have none
            flat["model.encoder_head"] = "labels" if label_head_chosen(flat.get("model.encoder_head"), task) else "linear"
        changed = [
            f"{key}: the run used {saved.get(key)!r}, the recipe now says {now.get(key)!r}"
            for key in sorted(set(saved) | set(now))
            if key.startswith(FROZEN_ON_RESUME + self.recipe.method.frozen_on_resume) and saved.get(key) != now.get(key)
        ]
        if changed:
            raise ZoftError(changed, title="cannot resume: the recipe changed what the run trains")

    def _write_run_files(self) -> None:
        if not self.world.is_main:
            return
        (self.run_dir / "config.yaml").write_text(dump_recipe(self.recipe))
        meta = {
            "zoft": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        }
        import transformers

        meta["transformers"] = transformers.__version__
        (self.run_dir / "meta.json").write_text(json.dumps(meta, indent=1))

    # ---- evaluation and checkpoints ------------------------------------------------------
    def _evaluate(self, session: Session, split: str, step: int) -> dict:
        items = session.dev if split == "dev" else session.test
        self.peaks.restart()
        result = session.objective.evaluate(session.model, session.tokenizer, items, self.recipe.eval.batch_size)
        record = {"step": step, "split": split, **result, "mem_gib": round(self.peaks.now(), 4), "time_s": round(self.elapsed(), 3)}
        self.peaks.restart()  # the next steps' mem_gib: training alone
        self.metrics.write(record)
        if self.world.is_main:
            (self.run_dir / "eval").mkdir(exist_ok=True)
            (self.run_dir / "eval" / f"{split}_{checkpoint.step_name(step)}.json").write_text(json.dumps(record, indent=1))
        self.reporter.eval(record)
        return record

    def elapsed(self) -> float:
        """Seconds of training, earlier sessions of a resumed run included."""
        return time.perf_counter() - self.began

    def _save(self, session: Session, step: int, state: dict, name: str | None = None) -> Path:
        folder = self.ckpt_root / (name or checkpoint.step_name(step))
        if not self.world.is_main:
            return folder
        folder = checkpoint.save(
            folder,
            session.params,
            session.method.state_dict(),
            {**state, "elapsed_s": self.elapsed(), "step": step},
            session.method.deltas(),
        )
        if name is None:
            checkpoint.mark_latest(self.ckpt_root, folder)
            checkpoint.prune(self.ckpt_root, self.recipe.checkpoint.keep_last)
        return folder

    def _replay(self, session: Session) -> tuple[int, dict]:
        """Re-apply the updates of the steps metrics.jsonl logged to the initial weights: a ZO update
        is a function of (seed, step, projected gradients, lr) alone, momentum and Adam state too.
        The best-dev weights were not kept, so the best checkpoint is chosen among later evaluations."""
        records = read_metrics(self.run_dir / "metrics.jsonl")
        steps = [r for r in records if is_step(r)]
        if [r["step"] for r in steps] != list(range(1, len(steps) + 1)):
            missing = sorted(set(range(1, max(r["step"] for r in steps) + 1)) - {r["step"] for r in steps})
            raise ZoftError(f"checkpoint.replay: {self.run_dir / 'metrics.jsonl'} lacks the records of steps "
                            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}; every step's is needed",
                            title="cannot replay")
        for r in records:
            if r.get("event") == "path":  # the path `method.path: auto` chose: replay on it, no new timing
                session.method.use_path(r["path"])
        for r in steps:
            if r.get("proj_grad") is not None:  # a skipped step changed nothing
                grads = r["proj_grad"] if isinstance(r["proj_grad"], list) else [r["proj_grad"]]
                session.method.update(r["step"] - 1, grads, r["lr"])
        metric = session.objective.metric
        zero_shot = {r["split"]: r[metric] for r in records if r.get("split") and r["step"] == 0}
        last = steps[-1] if steps else {"step": 0, "time_s": 0.0}
        evaluated = {r["step"] for r in records if r.get("split") == "dev"}
        if self.recipe.eval.test_each and session.test:  # an evaluation cut short has no test record
            evaluated &= {r["step"] for r in records if r.get("split") == "test"}
        state = {"zero_shot": zero_shot, "elapsed_s": last["time_s"], "last_dev_step": max(evaluated, default=None)}
        return last["step"], state

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> dict:
        recipe = self.recipe
        resume_from = self._prepare_run_dir()
        session = build_session(recipe)
        with one_stream(session.device):  # a recording's stream, eager work included: one cuBLAS workspace
            return self._run(session, resume_from)

    def _run(self, session: Session, resume_from: Path | str | None) -> dict:
        recipe = self.recipe
        state = {
            "best_dev": None, "best_step": None, "elapsed_s": 0.0, "zero_shot": {},
            "lr_scale": 1.0, "rollbacks": 0, "loss_ema": None, "ema_steps": 0, "bad_steps": 0,
        }
        start = 0
        if resume_from == REPLAY:
            start, replayed = self._replay(session)
            state.update(replayed)
            self.reporter.message(f"replayed the {start} logged steps of {self.run_dir / 'metrics.jsonl'}")
        elif resume_from is not None:
            loaded = checkpoint.load(resume_from, session.params, session.method)
            start, state = loaded.step, {**state, **loaded.state}
            self.reporter.message(f"resumed from {resume_from} (step {start})")
        if resume_from is not None:
            self.metrics.truncate_after(start, evaluated=state.get("last_dev_step") == start)
        state["step"] = start  # the weights are those after state["step"] steps; kept up to date
        self._write_run_files()
        self.peaks = Peaks(session.device)
        self.peaks.restart()  # loading and replay are not a step's cost
        self.began = time.perf_counter() - state["elapsed_s"]

        previous = self._install_interrupt_handler()
        try:
            with self._out_of_memory_guard(session, state):
                if start == 0 and recipe.eval.at_start:
                    for split in ("dev", "test") if recipe.eval.test else ("dev",):
                        if getattr(session, split):
                            state["zero_shot"][split] = self._evaluate(session, split, 0)[session.objective.metric]
                if 0 < start < recipe.train.max_steps and self._evaluates_at(session, start) and state.get("last_dev_step") != start:
                    self._track_best(session, state, start)  # due at `start`, but the earlier process ended first
                self._loop(session, state, start)
                return self._finish(session, state)
        finally:
            self._restore_interrupt_handler(previous)
            self.world.close()

    def _loop(self, session: Session, state: dict, step: int) -> None:
        recipe = self.recipe
        batcher = Batcher(session.train, recipe.train.batch_size, recipe.run.seed)
        if step < recipe.train.max_steps:
            self._record_graphs(session, batcher, step)
            if session.method.paths():
                self._choose_path(session, batcher, step)
        self.reporter.start(recipe.train.max_steps, step)
        stopping = False
        while step < recipe.train.max_steps:
            carry = not stopping and self._runs_on_after(session, step + 1)
            record = self._train_step(session, batcher, step, state, carry)
            done = state["step"] = step + 1
            self._check_bad_steps(session, state, record, done)
            if self._diverged(state, record):
                step = self._roll_back(session, state, done)
                continue
            if self._evaluates_at(session, done):
                self._track_best(session, state, done)
            if self._checkpoints_at(done):
                self._save(session, done, state)
            stopping = self.world.any(self.interrupted)
            if stopping and session.method.carried is None:  # else one more step, uncarried, first
                folder = self._save(session, done, state)
                raise Interrupted(done, folder)
            step = done

    def _evaluates_at(self, session: Session, done: int) -> bool:
        every = self.recipe.eval.every
        return bool(every and done % every == 0 and session.dev)

    def _checkpoints_at(self, done: int) -> bool:
        every = self.recipe.checkpoint.every
        return bool(every and done % every == 0)

    def _runs_on_after(self, session: Session, done: int) -> bool:
        """Whether the next step follows step `done` with nothing reading the weights in between
        (no evaluation, checkpoint or end): then a step may carry its successor's first perturbation."""
        return done < self.recipe.train.max_steps and not self._evaluates_at(session, done) and not self._checkpoints_at(done)

    def _record_graphs(self, session: Session, batcher: Batcher, step: int) -> None:
        """`train.cuda_graphs` on a GPU: record the first batch's loss (now, or once `_choose_path`
        has moved to a path whose forward allows it); under auto a recording that fails (a model
        whose forward synchronises, say) leaves the run on eager forwards."""
        setting = self.recipe.train.cuda_graphs
        if setting is False or session.device.type != "cuda" or not isinstance(session.method, ZOMethod):
            return
        session.graphs = LossGraphs(session.objective, session.model, session.method.forward_state)
        self._probe_graphs(session, batcher.batch(step), step)

    def _probe_graphs(self, session: Session, items: list[Encoded], step: int) -> None:
        if session.graphs is None or session.method.forward_state() is None or session.graphs.current():
            return
        try:
            with torch.inference_mode():
                session.batch_loss(self.world.shard(items))()
        except RuntimeError as error:
            session.graphs = None
            why = str(error).strip().splitlines()[0][:200]
            if self.recipe.train.cuda_graphs is True:
                raise ZoftError(f"train.cuda_graphs: recording the loss failed ({why}); use auto or false") from None
            self.reporter.message(f"train.cuda_graphs auto: recording the loss failed ({why}); eager forwards it is")
        self.metrics.write({"step": step, "event": "cuda_graphs", "used": session.graphs is not None})

    def _choose_path(self, session: Session, batcher: Batcher, step: int, repeats: int = 2) -> None:
        """`method.path: auto` on a GPU: time a step's estimate (which leaves the weights as they
        were, up to the rounding of in-place restores) on each path with the first batch, after a
        warm-up, and go on with the faster one. Ranks average their times, so that all of them
        choose the same path."""
        method = session.method
        times = {}
        for path in method.paths():
            method.use_path(path)
            self._probe_graphs(session, batcher.batch(step), step)
            loss = session.batch_loss(self.world.shard(batcher.batch(step)), self.world.mean)
            method.estimate(loss, step)
            if session.device.type == "cuda":
                torch.cuda.synchronize(session.device)
            began = time.perf_counter()
            for _ in range(repeats):
                method.estimate(loss, step)
            if session.device.type == "cuda":
                torch.cuda.synchronize(session.device)
            elapsed = torch.tensor([(time.perf_counter() - began) / repeats], device=session.device)
            times[path] = float(self.world.mean(elapsed))
        best = min(times, key=times.get)
        method.use_path(best)
        self.metrics.write({"step": step, "event": "path", "path": best, **{f"{p}_ms": round(1e3 * t, 1) for p, t in times.items()}})
        self.reporter.message("method.path auto: " + ", ".join(f"{p} {1e3 * t:.0f} ms" for p, t in times.items()) + f" an estimate; {best} it is")

    def _train_step(self, session: Session, batcher: Batcher, step: int, state: dict, carry: bool = False) -> dict:
        recipe = self.recipe
        spread = self.world.size > 1 and recipe.train.spread_queries
        lr = lr_at(step, recipe.optim, recipe.train.max_steps) * state["lr_scale"]
        if spread:  # each rank: its queries on the whole batch; one all-reduce of q numbers
            result = session.method.step(session.batch_loss(batcher.batch(step)), step, lr, queries=self.world)
        else:  # each rank: its share of the batch; one all-reduce of a scalar (or pair) per pass
            loss = session.batch_loss(self.world.shard(batcher.batch(step)), self.world.mean)
            result = session.method.step(loss, step, lr, carry=carry)
        record = {
            "step": step + 1,
            "loss": result.loss if result.finite else None,
            "proj_grad": result.grads[0] if len(result.grads) == 1 else (result.grads or None),
            "queries": len(result.grads),
            "seed": recipe.run.seed,
            "lr": lr,
            "mem_gib": round(self.peaks.now(), 4),
            "time_s": round(self.elapsed(), 3),
        }
        if not result.applied:
            record["proj_grad"] = None
            record["skipped"] = "non-finite loss or projected gradient: nothing was applied"
        self.metrics.write(record)
        if (step + 1) % recipe.logging.every == 0 or step + 1 == recipe.train.max_steps or not result.applied:
            self.reporter.step(record)
        return record

    # ---- guards --------------------------------------------------------------------------
    def _check_bad_steps(self, session: Session, state: dict, record: dict, done: int) -> None:
        """Count skipped steps in a row; past `train.max_bad_steps`, checkpoint and stop."""
        if "skipped" not in record:
            state["bad_steps"] = 0
            return
        state["bad_steps"] += 1
        limit = self.recipe.train.max_bad_steps
        if state["bad_steps"] >= limit:
            folder = self._save(session, done, state)
            r = self.recipe
            raise RunStopped([
                f"{limit} steps in a row (up to step {done}) had a non-finite loss or projected gradient; "
                "each was skipped, so the weights are those before them",
                f"try a smaller optim.lr (now {r.optim.lr:g}) or method.eps (now {getattr(r.method, 'eps', '-')}), "
                f"model.dtype bf16 or fp32 instead of {r.model.dtype}" + (", or method.restore=copy" if r.model.dtype != "fp32" else ""),
                f"checkpoint written: {folder}; continue with checkpoint.resume=auto",
            ], title="training stopped: non-finite losses")

    def _diverged(self, state: dict, record: dict) -> bool:
        """True when the loss is over `divergence_factor` × its running mean (after 50 steps)."""
        loss, factor = record["loss"], self.recipe.train.divergence_factor
        if loss is None or "skipped" in record:
            return False
        ema = state["loss_ema"]
        if factor is not None and ema is not None and state["ema_steps"] >= 50 and loss > factor * ema:
            return True
        state["loss_ema"] = loss if ema is None else 0.98 * ema + 0.02 * loss
        state["ema_steps"] += 1
        return False

    def _roll_back(self, session: Session, state: dict, done: int) -> int:
        """Reload the newest checkpoint with a smaller learning rate; the step to go on from."""
        r = self.recipe
        folder = checkpoint.newest(self.ckpt_root)
        if folder is None or state["rollbacks"] >= r.train.max_rollbacks:
            why = "no checkpoint to roll back to" if folder is None else f"{r.train.max_rollbacks} rollbacks already"
            raise RunStopped([
                f"the loss at step {done} exceeded {r.train.divergence_factor:g}× its running mean; {why}",
                f"try a smaller optim.lr (now {r.optim.lr:g}) or a more frequent checkpoint.every",
            ], title="training stopped: the loss diverged")
        lr_scale, rollbacks = state["lr_scale"] * r.train.rollback_lr_factor, state["rollbacks"] + 1
        loaded = checkpoint.load(folder, session.params, session.method)
        state.clear()
        state.update({**loaded.state, "lr_scale": lr_scale, "rollbacks": rollbacks})
        self.metrics.truncate_after(loaded.step)
        self.metrics.write({"step": loaded.step, "event": "rollback", "diverged_at": done, "lr_scale": lr_scale})
        self.reporter.message(f"loss diverged at step {done}: rolled back to step {loaded.step}, learning rate × {lr_scale:g}")
        return loaded.step

    @contextlib.contextmanager
    def _out_of_memory_guard(self, session: Session, state: dict):
        """Out of GPU memory: checkpoint the last completed step (the weights are intact, the
        perturbation in flight having been undone), then stop with what to change."""
        try:
            yield
        except torch.OutOfMemoryError:
            if session.device.type == "cuda":
                torch.cuda.empty_cache()
            step = state["step"]
            folder = self._save(session, step, state)
            r = self.recipe
            raise RunStopped([
                f"out of GPU memory after {step} completed steps; checkpoint written: {folder}",
                f"lower train.batch_size (now {r.train.batch_size}), eval.batch_size (now {r.eval.batch_size}) "
                f"or data.max_length (now {r.data.max_length}), then continue with checkpoint.resume=auto",
                f"see what fits: zoft profile-memory {self.run_dir / 'config.yaml'}",
            ], title="out of memory") from None

    def _track_best(self, session: Session, state: dict, step: int) -> None:
        metric = session.objective.metric
        score = self._evaluate(session, "dev", step)[metric]
        test = self._evaluate(session, "test", step)[metric] if self.recipe.eval.test_each and session.test else None
        state["last_dev_step"] = step  # once the whole evaluation is made (a checkpoint may follow it)
        if state["best_dev"] is None or score > state["best_dev"]:
            state["best_dev"], state["best_step"], state["best_test"] = score, step, test
            self._save(session, step, state, name="best")

    def _finish(self, session: Session, state: dict) -> dict:
        recipe = self.recipe
        steps = recipe.train.max_steps
        if session.dev and state.get("last_dev_step") != steps:
            self._track_best(session, state, steps)
        latest = checkpoint.newest(self.ckpt_root)
        if latest is None or latest.name != checkpoint.step_name(steps):
            self._save(session, steps, state)
        best = self.ckpt_root / "best"
        if (best / checkpoint.DONE).is_file():  # score and keep the weights that did best on dev
            checkpoint.load(best, session.params, session.method)
        test = None
        if recipe.eval.test and session.test:  # with eval.test_each, the best step's test is already scored
            test = state.get("best_test")
            if test is None:
                test = self._evaluate(session, "test", state["best_step"] or steps)[session.objective.metric]
        session.method.merge()  # terms still in factor space go into the weights before saving
        if recipe.checkpoint.save_final and self.world.is_main:
            session.model.save_pretrained(self.run_dir / "model")
            if deltas := session.method.deltas():  # a quantized base cannot hold them: W_eff = W + A Bᵀ
                checkpoint.write_tensors(deltas, self.run_dir / "model" / checkpoint.DELTAS)
            session.tokenizer.save_pretrained(self.run_dir / "model")
        summary = {
            "run_dir": str(self.run_dir),
            "task": recipe.data.task,
            "metric": session.objective.metric,
            "steps": steps,
            "zero_shot_dev": state["zero_shot"].get("dev"),
            "zero_shot_test": state["zero_shot"].get("test"),
            "best_dev": state["best_dev"],
            "best_step": state["best_step"],
            "test": test,
            "time_s": round(self.elapsed(), 2),
            "peak_mem_gib": round(self.peaks.restart(), 3),
        }
        if self.world.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(summary, indent=1))
        self.reporter.finish(summary)
        self.world.barrier()
        return summary

    # ---- Ctrl-C --------------------------------------------------------------------------
    def _install_interrupt_handler(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_signal(signum, frame):
            if self.interrupted:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.interrupted = True
            self.reporter.message("stopping: writing a checkpoint after this step (Ctrl-C again to abort)")

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_interrupt_handler(previous) -> None:
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
