"""Helpers the tests share, one module per concept (callers, databases, processes, ...)."""
