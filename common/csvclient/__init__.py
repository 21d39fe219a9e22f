"""`school-csv`: import and export CSV files through the services, with progress."""
