"""The running service: the HTTP API (`api`), the ops console (`console`), the `journeys`
command (`cli`), and what they share: the event router, the review desk, users.

Imports engine/ (language, database), runtime/ and Temporal's client; never imported by
workflows/, activities/ or channels/.
"""
