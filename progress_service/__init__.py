"""Per-user progress: sign-language items learned and zones-of-regulation check-ins."""
