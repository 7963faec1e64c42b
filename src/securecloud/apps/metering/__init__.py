"""Metering: meter protocol, simulator, aggregator and the trusted authenticator."""
