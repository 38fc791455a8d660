"""zoft: zeroth-order fine-tuning of language models (forward passes only).

Nothing heavy is imported here so that `zoft --help` stays fast.
"""

__version__ = "0.1.0"
