"""Suite-wide pytest configuration. Area fixtures live in each area's own conftest.py and in
tests/support/ (one module per real component)."""
