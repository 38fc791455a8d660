"""Run records: metrics.jsonl and the run directory layout."""
