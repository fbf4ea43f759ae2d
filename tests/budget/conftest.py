"""Fixtures for the budget tests: a real redis-server (tests/support/redis_server.py)."""

from tests.support.redis_server import redis_factory, redis_server  # noqa: F401
