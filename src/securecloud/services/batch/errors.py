"""Batch errors with their HTTP status and reason code."""

from securecloud.infra.api_client import ServiceError


class BatchError(ServiceError):
    reason = "batch-error"


class SubmissionInvalid(BatchError):
    """A submission field is missing or wrong; the message names it."""

    status = 400
    reason = "invalid-submission"


class SubmissionNotFound(BatchError):
    status = 404
    reason = "no-such-submission"


class Unauthorized(BatchError):
    status = 401
    reason = "bad-token"


class QueueError(BatchError):
    status = 503
    reason = "queue-unavailable"
