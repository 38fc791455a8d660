"""Methods: importing this package registers the built-in ones."""

from zoft.methods import adazeta, fo, lozo, mezo, subzo, tezo  # noqa: F401  (they register)
from zoft.methods.base import METHODS, Method, StepResult, ZOMethod

__all__ = ["METHODS", "Method", "StepResult", "ZOMethod"]
