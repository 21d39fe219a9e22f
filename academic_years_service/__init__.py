"""Academic years: each organization's roster of academic year periods."""
