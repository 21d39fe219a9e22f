"""The common kit on its own: settings, tokens, CSV, logs, metrics, error mapping."""
