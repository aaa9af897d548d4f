"""Helpers shared by relayd's tests (imported as ``tests.support.<module>``); the fixtures among them are
registered in tests/conftest.py (``pytest_plugins``)."""
