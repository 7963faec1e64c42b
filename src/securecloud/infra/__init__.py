"""Infrastructure services: LAS, CAS, monitoring, and the web plumbing they share."""
