"""ZO methods: importing this package registers the built-in ones."""

from zoft.methods import mezo  # noqa: F401  (registers)
from zoft.methods.base import METHODS, ZOMethod

__all__ = ["METHODS", "ZOMethod"]
