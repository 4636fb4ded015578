"""Delivery through Apprise, template rendering, consent, quiet hours and frequency caps."""
