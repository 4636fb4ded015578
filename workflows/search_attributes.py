"""The search attributes a run carries, as Temporal's typed keys.

Their names are defined once, in `engine.payloads.SearchAttribute` (the dev server and the
tests register them from there); the keys are built here once, for the interpreter (which
sets `CurrentStep` and `Outcome`) and for whoever starts a run (`at_start`: the event
router, the bench, the tests). Deterministic: no I/O.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from engine.payloads import SearchAttribute

__all__ = ["CURRENT_STEP", "CUSTOMER_ID", "JOURNEY_ID", "JOURNEY_VERSION", "OUTCOME", "at_start"]

JOURNEY_ID = SearchAttributeKey.for_keyword(SearchAttribute.JOURNEY_ID)
JOURNEY_VERSION = SearchAttributeKey.for_keyword(SearchAttribute.JOURNEY_VERSION)
CUSTOMER_ID = SearchAttributeKey.for_keyword(SearchAttribute.CUSTOMER_ID)
CURRENT_STEP = SearchAttributeKey.for_keyword(SearchAttribute.CURRENT_STEP)
OUTCOME = SearchAttributeKey.for_keyword(SearchAttribute.OUTCOME)


def at_start(*, journey_id: str, version: str, customer_id: str) -> TypedSearchAttributes:
    """What a run is started with, so it can be found by journey, version and customer."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(JOURNEY_ID, journey_id),
            SearchAttributePair(JOURNEY_VERSION, version),
            SearchAttributePair(CUSTOMER_ID, customer_id),
        ]
    )
