"""`zoft eval`: score a base model, or a run's checkpoint, on one or more tasks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from zoft.config.schema import ParamsConfig, Recipe
from zoft.data.tasks import TASKS
from zoft.engine import checkpoint
from zoft.engine.trainer import build_session, encoder_head, prepare_model


def evaluate(recipe: Recipe, out_dir: Path, which: str, split: str, tasks: list[str], run_dir: Path | None) -> list[dict]:
    """One record per task, each also written to `out_dir/eval/<task>_<split>_<checkpoint>[_icl<n>].json`.

    `which` is `none` (the base model) or a checkpoint of `run_dir` (`latest`, `best`, `step_N`).
    """
    for name in tasks:
        TASKS.get(name, "--tasks")  # every name checked before any model is loaded
    folder = None if which == "none" else checkpoint.find(run_dir / "checkpoints", which)
    if folder is None:  # the base model itself: a prefix's real-activation init would change it
        recipe = dataclasses.replace(recipe, params=ParamsConfig())
    loaded: dict = {}  # by head: causal LMs (None) and each classifier head
    records = []
    for name in tasks:
        task_recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, task=name))
        heads = encoder_head(recipe, TASKS.get(name, "--tasks"))
        if heads not in loaded:
            loaded[heads] = prepare_model(recipe, recipe.run.seed, heads)
            if folder is not None:
                checkpoint.load_weights(folder, loaded[heads][2], model=loaded[heads][0])
        session = build_session(task_recipe, with_method=False, prepared=loaded[heads])
        items = session.dev if split == "dev" else session.test
        result = session.objective.evaluate(session.model, session.tokenizer, items, recipe.eval.batch_size)
        record = {
            "model": recipe.model.name_or_path,
            "task": name,
            "split": split,
            "checkpoint": which if folder is None else f"{which} ({folder.name})",
            "icl_shots": recipe.eval.icl_shots,
            "metric": session.objective.metric,
            **result,
        }
        (out_dir / "eval").mkdir(parents=True, exist_ok=True)
        shots = f"_icl{recipe.eval.icl_shots}" if recipe.eval.icl_shots else ""
        (out_dir / "eval" / f"{name}_{split}_{which}{shots}.json").write_text(json.dumps(record, indent=1))
        records.append(record)
    return records
