"""Fixtures for the deployment tests: a real redis-server (shared budgets across relay "pods")."""

from tests.support.redis_server import redis_server  # noqa: F401
