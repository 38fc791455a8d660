"""Tasks, their templates and data loading (MeZO k-shot protocol)."""
