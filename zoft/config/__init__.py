"""Recipes: YAML -> typed, validated `Recipe` (every problem reported at once)."""

from zoft.config.loader import dump_recipe, load_recipe, recipe_to_dict
from zoft.config.recipes import list_recipes, resolve_recipe
from zoft.config.schema import Recipe

__all__ = ["Recipe", "dump_recipe", "list_recipes", "load_recipe", "recipe_to_dict", "resolve_recipe"]
