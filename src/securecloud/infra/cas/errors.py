"""CAS errors, each with its HTTP status and a stable reason code."""

from securecloud.infra.api_client import ServiceError


class CasError(ServiceError):
    reason = "cas-error"


class PolicyError(CasError):
    """The policy document is invalid; the message names the field."""

    status = 400
    reason = "invalid-policy"


class NotAuthorized(CasError):
    status = 403
    reason = "not-authorized"


class NotAuthenticated(CasError):
    status = 401
    reason = "client-certificate-required"


class SessionNotFound(CasError):
    status = 404
    reason = "no-such-session"


class PolicyConflict(CasError):
    status = 409
    reason = "predecessor-mismatch"


class AttestationRefused(CasError):
    status = 403
    reason = "attestation-refused"
