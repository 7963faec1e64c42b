"""Local attestation service: the simulated quoting service of one machine."""
