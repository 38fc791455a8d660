"""Atomic checkpoints: written to a temporary folder, completed with DONE, then renamed.

A folder without DONE (a save killed half way) is never resumed from; LATEST names the
newest complete one but is only a hint: the scan for DONE decides.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TRAINABLE = "trainable.safetensors"
METHOD_STATE = "method.safetensors"
DELTAS = "deltas.safetensors"  # low-rank terms of the functional path not yet in the weights
STATE = "state.json"
DONE = "DONE"


@dataclass
class Loaded:
    step: int
    state: dict
    folder: Path


def step_name(step: int) -> str:
    return f"step_{step:07d}"


def save(folder: Path, params, method_state: dict[str, torch.Tensor], state: dict, deltas: dict | None = None) -> Path:
    """Write a complete checkpoint at `folder` (replacing an older one of that name); `deltas`
    ({name.A, name.B}) are terms the weights still lack, applied by `load_weights`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # a quantized base's weights never change (their deltas are method state): not written
    write_tensors({name: p for name, p in params if p.dtype.is_floating_point}, tmp / TRAINABLE)
    write_tensors(method_state, tmp / METHOD_STATE)
    if deltas:
        write_tensors(deltas, tmp / DELTAS)
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    (tmp / DONE).write_text("complete\n")
    _fsync_tree(tmp)
    if folder.exists():
        trash = folder.parent / f".old-{folder.name}-{os.getpid()}"
        folder.rename(trash)
        tmp.rename(folder)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(folder)
    _fsync_dir(folder.parent)
    return folder


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Named tensors to a safetensors file (on the CPU, contiguous)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)


def mark_latest(root: Path, folder: Path) -> None:
    tmp = root / ".LATEST.tmp"
    tmp.write_text(folder.name + "\n")
    os.replace(tmp, root / "LATEST")


def complete_steps(root: Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / DONE).is_file())


def newest(root: Path) -> Path | None:
    steps = complete_steps(root)
    return steps[-1] if steps else None


def preferred(root: Path) -> str:
    """What to score by default: the best-dev checkpoint when there is one, else the latest."""
    return "best" if (root / "best" / DONE).is_file() else "latest"


def find(root: Path, which: str) -> Path:
    """`latest`, `best`, `step_N` or `N`: a complete checkpoint folder under `root`, else ZoftError."""
    from zoft.errors import ZoftError

    if which == "latest":
        folder = newest(root)
    elif which == "best":
        folder = root / "best"
    else:
        number = which.removeprefix("step_")
        folder = root / step_name(int(number)) if number.isdigit() else None
    if folder is None or not (folder / DONE).is_file():
        have = ", ".join(p.name for p in complete_steps(root)) or "none"
        best = " and best" if (root / "best" / DONE).is_file() else ""
        raise ZoftError(f"--checkpoint: no complete {which!r} checkpoint in {root} (complete ones: {have}{best})",
                        title="checkpoint not found")
    return folder


def recover(root: Path) -> None:
    """Undo what a save killed half way left: a half-written folder, or a replaced one whose
    successor never arrived (killed between the two renames of `save`)."""
    if not root.is_dir():
        return
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in root.glob(".old-*"):
        name = old.name.removeprefix(".old-").rsplit("-", 1)[0]
        if not (root / name / DONE).is_file() and (old / DONE).is_file():
            shutil.rmtree(root / name, ignore_errors=True)
            old.rename(root / name)
        else:
            shutil.rmtree(old, ignore_errors=True)


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` step checkpoints (half-written ones are `recover`'s to remove)."""
    for old in complete_steps(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_weights(folder: Path, params, with_deltas: bool = True, model=None) -> None:
    """Copy a checkpoint's trained tensors into the live parameters, with its deltas written in
    (`with_deltas`; a resumed method keeps them in factor space instead). A quantized weight
    cannot take its delta: `model` then gets hooks that add it to the layer's output."""
    tensors = load_file(folder / TRAINABLE)
    missing = [name for name, p in params if name not in tensors and p.dtype.is_floating_point]
    if missing:
        raise KeyError(f"{folder}: no tensor for {missing[:3]}")
    deltas = load_file(folder / DELTAS) if with_deltas and (folder / DELTAS).is_file() else {}
    over_quantized = {}
    with torch.no_grad():  # first-order runs train leaves that require grad
        for index, (name, p) in enumerate(params):
            if p.dtype.is_floating_point:
                p.copy_(tensors[name])
            if f"{name}.A" not in deltas:
                continue
            if p.dtype.is_floating_point:
                a, b = (deltas[f"{name}.{part}"].to(p.device, p.dtype) for part in "AB")
                p.view(p.shape[0], -1).addmm_(a, b.T)
            else:
                over_quantized[index] = tuple(deltas[f"{name}.{part}"].to(p.device) for part in "AB")
    if over_quantized:
        from zoft.methods.functional import attach_terms

        attach_terms(model, params, over_quantized)


def load(folder: Path, params, method) -> Loaded:
    """Copy a checkpoint's tensors into the live parameters and method state."""
    load_weights(folder, params, with_deltas=False)
    with torch.no_grad():
        method.load_state_dict(load_file(folder / METHOD_STATE))
    state = json.loads((folder / STATE).read_text())
    return Loaded(step=state["step"], state=state, folder=folder)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
