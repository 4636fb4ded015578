"""The running service: the HTTP API and event router, the Temporal client, `journeys up`.

Imports engine/ (language, database) and Temporal's client; never imported by workflows/.
"""
