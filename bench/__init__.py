"""Benchmarks, one entry point: `python -m bench {rpc,csv,sqlpath,tenant-settings} [options]`."""
