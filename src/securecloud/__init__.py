"""securecloud: confidential processing of smart-metering data on untrusted clouds."""

__version__ = "0.1.0"
