"""The error types the runtime raises as Temporal ApplicationErrors, in one table.

Bad configuration is non-retryable; an outage is retryable. Workflows and activities both
refer to these names (this module imports nothing from Temporal).
"""

from __future__ import annotations

from typing import Final

__all__ = ["NON_RETRYABLE", "ErrorType"]


class ErrorType:
    """`ApplicationError.type` values."""

    BAD_CONFIGURATION: Final = "BadConfiguration"
    TEMPLATE_ERROR: Final = "TemplateError"
    EVALUATION_ERROR: Final = "EvaluationError"
    PERMANENT_DELIVERY_FAILURE: Final = "PermanentDeliveryFailure"
    PROVIDER_UNAVAILABLE: Final = "ProviderUnavailable"
    MODEL_ERROR: Final = "ModelError"
    HTTP_CALL_FAILED: Final = "HttpCallFailed"
    HTTP_CALL_REJECTED: Final = "HttpCallRejected"
    UNKNOWN_REVIEW_TASK: Final = "UnknownReviewTask"


NON_RETRYABLE: Final = frozenset(
    {
        ErrorType.BAD_CONFIGURATION,
        ErrorType.TEMPLATE_ERROR,
        ErrorType.EVALUATION_ERROR,
        ErrorType.PERMANENT_DELIVERY_FAILURE,
        ErrorType.HTTP_CALL_REJECTED,
        ErrorType.UNKNOWN_REVIEW_TASK,
    }
)
