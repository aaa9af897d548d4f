"""Logging: journald priorities under systemd, and registered secrets scrubbed from every record."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from relayd.logs import SCRUBBER, JournalFormatter, SecretScrubber, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_under_systemd_each_line_carries_its_syslog_priority(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging("info")
    logging.getLogger("relayd.test").warning("the disk is full")
    logging.getLogger("relayd.test").info("all good")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["<4>relayd.test: the disk is full", "<6>relayd.test: all good"]


def test_registered_secrets_never_reach_a_log_line() -> None:
    scrubber = SecretScrubber()
    scrubber.add("hf_supersecret123")
    scrubber.add("abc")  # too short to be a secret worth matching
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter("%(message)s"))
    handler.addFilter(scrubber)
    logger = logging.getLogger("relayd.test.scrub")
    logger.addHandler(handler)
    try:
        logger.error("refused %s at abc", "hf_supersecret123")
        try:
            raise ValueError("token hf_supersecret123 expired")
        except ValueError:
            logger.exception("refresh failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "hf_supersecret123" not in text
    assert "refused *** at abc" in text
    assert "token *** expired" in text


def test_the_daemon_scrubber_is_installed_by_setup_logging(restore_logging: None) -> None:
    setup_logging("info")
    assert any(SCRUBBER in handler.filters for handler in logging.getLogger().handlers)
