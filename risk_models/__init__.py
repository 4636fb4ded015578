"""Demo risk models for the example catalogue (synthetic; not for real decisions)."""
