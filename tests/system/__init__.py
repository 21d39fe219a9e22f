"""Whole processes and cross-service properties: start-up, faults, workers, TLS, tools and
other ecosystems, deployment files, the benchmark harness, the client, row-level security."""
