"""progress_service: its RPCs, servicer, CSV, bad input and tenant isolation."""
