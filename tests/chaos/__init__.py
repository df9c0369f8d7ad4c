"""Chaos and bad-input suites: the fleet under faults, with real services and real processes."""
