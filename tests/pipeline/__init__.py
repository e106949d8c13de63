"""A package, so that its conftest.py is imported as pipeline.conftest and does not shadow
tests/conftest.py (which other test files import as `conftest`)."""
