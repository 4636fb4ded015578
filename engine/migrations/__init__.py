"""Alembic's migrations of the app database (run by `engine.migrate`, never imported by hand)."""
