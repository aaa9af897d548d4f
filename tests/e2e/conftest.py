"""Fixtures: a real forwarding proxy, and no proxy variable unless a test sets one (tests/proxybox.py)."""

from __future__ import annotations

from proxybox import locked_proxy, no_proxy_variables  # noqa: F401 - fixtures
