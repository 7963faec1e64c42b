"""The exception hierarchy of the runtime layer."""


class EnclaveError(Exception):
    """Base class of runtime errors."""


class ManifestError(EnclaveError):
    """A service manifest is missing or invalid (the message names the field)."""


class AttestationError(EnclaveError):
    """Evidence could not be produced or does not verify.

    `reason` is a short stable code (for example "unknown-platform") that CAS
    writes to its audit log and returns to the client, so each kind of refusal
    can be told apart without parsing the message.
    """

    def __init__(self, message: str, reason: str = "invalid-evidence"):
        super().__init__(message)
        self.reason = reason


class BudgetError(EnclaveError):
    """Starting a service would exceed the node's enclave memory budget."""


class SealingError(EnclaveError):
    """Sealed data does not open for this code on this platform."""


class ShieldedFileError(EnclaveError):
    """A shielded file was altered, truncated, reordered or rolled back."""


class RollbackError(ShieldedFileError):
    """A shielded file is older than the version last committed."""


class LaunchError(EnclaveError):
    """A service could not be started in enclave mode."""
