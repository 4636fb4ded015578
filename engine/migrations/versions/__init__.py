"""One module per schema revision, oldest first (`0001_...`); Alembic loads them by file."""
