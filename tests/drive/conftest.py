"""Fixtures: a fake Aliyun Drive and a DriveBox (catalogue, staging, relayd's drive) over it, defined in
drivebox.py next to DriveBox (tests/hops/test_pan_upload.py uses them too)."""

from __future__ import annotations

from drivebox import box, fake, secrets  # noqa: F401 - fixtures
from proxybox import locked_proxy, no_proxy_variables, tinyproxy  # noqa: F401 - fixtures
