"""Shared fixtures live in tests/fixtures/*; each file is a pytest plugin owned by one area."""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.audio",
    "tests.fixtures.services",
]
