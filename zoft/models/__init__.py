"""Model sources: tiny built-ins, installed packages, local folders, hub ids, GGUF files."""
