"""The bounds of one generation of a run, and how its queue is carried into the next.

Read by the interpreter (`workflows.journey_run`) at the moment it decides, as
attributes of this module (``bounds.GENERATION_PATH``): it is passed through Temporal's
workflow sandbox, so a test can lower a bound for one run of the suite
(tests/workflows/test_long_runs.py does, to park a queue without 10,000 events).
Changing a value changes what runs do next: it is part of the `long-runs` behaviour.
"""

from __future__ import annotations

__all__ = [
    "BACKLOG_PAGE",
    "CARRY_EVENTS_BYTES",
    "CARRY_IDS_BYTES",
    "GENERATION_BYTES",
    "GENERATION_EVENTS",
    "GENERATION_PATH",
]

GENERATION_EVENTS = 4000
"""History events after which a run continues as new (Temporal suggests it at 4 Ki events
or 4 MB on its default limits, warns at 10 Ki, and stops a run at 50 Ki)."""
GENERATION_BYTES = 2_000_000
GENERATION_PATH = 2000
"""Path entries one generation holds at most (its query answer and result stay small)."""
CARRY_EVENTS_BYTES = 250_000
"""Queued events up to this size (as JSON) are carried whole; a larger queue is carried by
reference: the message ids of its events already checked against `exit_on` (`backlog`),
read back from the events table in pages of `BACKLOG_PAGE` as the run gets to them."""
CARRY_IDS_BYTES = 400_000
"""A backlog whose ids alone pass this is parked in the `run_backlog` table instead
(`park_events`), and the next generation carries only its length. Together with the
events carried whole, a generation's input stays under Temporal's 512 KB payload
warning (its limit is 2 MB)."""
BACKLOG_PAGE = 200
"""Queued events read back from the events table at a time (`load_events`)."""
