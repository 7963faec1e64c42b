"""KVS errors with their HTTP status and reason code."""

from securecloud.infra.api_client import ServiceError


class KvsError(ServiceError):
    reason = "kvs-error"


class BadRequest(KvsError):
    status = 400
    reason = "bad-request"


class NotFound(KvsError):
    status = 404
    reason = "not-found"


class PreconditionFailed(KvsError):
    status = 412
    reason = "version-mismatch"


class QuorumLost(KvsError):
    """Too few storage nodes answered: nothing was made visible."""

    status = 503
    reason = "quorum-lost"


class FragmentInvalid(KvsError):
    """A fragment failed its MAC: substituted, corrupted or replayed by a node."""

    status = 500
    reason = "fragment-invalid"
