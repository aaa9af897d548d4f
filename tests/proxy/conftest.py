"""Fixtures: a real forwarding proxy, and no proxy variable unless a test sets one (tests/proxybox.py)."""

from __future__ import annotations

from proxybox import no_proxy_variables, tinyproxy  # noqa: F401 - fixtures
