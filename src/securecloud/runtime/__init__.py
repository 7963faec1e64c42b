"""The trusted-execution abstraction: measure, attest, seal, shield, budget, launch.

Everything above this layer asks "is this the code we expect, on a platform we
trust?" through `Attester`/`Verifier` and never through a TEE-specific API.
There is no TEE on our machines: the `sim` backend runs the full protocol with
a software platform key and gives no isolation (see docs/threat-model.md).
"""
