"""Configuration and Attestation Service: policies, secrets, attestation, CA, audit log."""
