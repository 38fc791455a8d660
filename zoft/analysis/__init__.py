"""Gradient analyses (low-rankness across layers and across time)."""
