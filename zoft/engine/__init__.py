"""The internal engine: training loop, ZO estimate, checkpoints, evaluation. No CLI, no rich."""
