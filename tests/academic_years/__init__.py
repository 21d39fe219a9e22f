"""academic_years_service: its RPCs, filters, parsing, migrations, CSV and tenant isolation."""
