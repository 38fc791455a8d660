"""Packaged recipes: listed by `zoft train --list`, runnable by name (`zoft train quickstart`)."""

from __future__ import annotations

from pathlib import Path

from zoft.errors import ZoftError
from zoft.registry import closest


def recipes_dir() -> Path:
    """`zoft/_recipes` in an installed wheel, the repository's `recipes/` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "_recipes"
    return installed if installed.is_dir() else package.parent / "recipes"


def list_recipes() -> list[str]:
    """Every YAML file under the recipes folder but those named `_*.yaml` (a tool's data, such as
    recipes/results/_table.yaml, not a recipe)."""
    root = recipes_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_"))


def resolve_recipe(source: str | Path) -> Path:
    """A recipe file path as given, else a packaged recipe by name."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    packaged = recipes_dir() / f"{str(source).removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    names = list_recipes()
    guess = closest(str(source), names)
    hint = f" (did you mean {guess}?)" if guess else ""
    raise ZoftError(
        f"recipe {str(source)!r}: no such file and no packaged recipe of that name{hint}; "
        "`zoft train --list` shows the packaged ones",
        title="recipe not found",
    )
