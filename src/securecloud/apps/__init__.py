"""Applications on the platform: metering, billing, fraud detection, the consumer portal."""
