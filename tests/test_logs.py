"""Logging: journald priorities under systemd; registered secrets, URL query values and URL userinfo
scrubbed from every record; third-party debug chatter kept off."""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

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


def test_signed_urls_and_proxy_passwords_never_reach_a_log_line() -> None:
    """Whatever logger prints a URL (httpcore2's response headers, urllib3's request lines, an
    exception), its query values and userinfo are replaced; registered secrets still are too."""
    scrubber = SecretScrubber()
    scrubber.add("hf_registered_token")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(scrubber)
    root = logging.getLogger("relayd.test.urls")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    location = (
        b"https://cdn-lfs.hf.co/repos/ab/cd/x?response-content-disposition=inline"
        b"&Expires=1700000000&Policy=eyJTdGF0ZW1lbnQi&Signature=Zm9vYmFyc2ln&Key-Pair-Id=K2JCJMDEHXQW5F"
    )
    try:
        root.debug(
            "receive_response_headers.complete return_value=%r",
            (b"HTTP/1.1", 302, b"Found", [(b"Location", location)]),
        )
        root.debug(
            '%s://%s:%s "%s %s %s" %s %s',
            "https",
            "bucket.oss-cn-beijing.aliyuncs.com",
            443,
            "PUT",
            "/part?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=0b1c2d3e&x-oss-signature=c2lnbmF0dXJl",
            "HTTP/1.1",
            200,
            None,
        )
        root.warning("through http://relayd:Pr0xyPassw0rd@proxy.example:3128 with hf_registered_token")
        try:
            raise OSError("GET https://h.example/lfs/1?sig=deadbeefcafe failed")
        except OSError:
            root.exception("fetch failed")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    for secret in (
        "eyJTdGF0ZW1lbnQi",
        "Zm9vYmFyc2ln",
        "K2JCJMDEHXQW5F",
        "AKIAEXAMPLE",
        "0b1c2d3e",
        "c2lnbmF0dXJl",
        "Pr0xyPassw0rd",
        "hf_registered_token",
        "deadbeefcafe",
    ):
        assert secret not in text
    assert "Signature=***" in text and "X-Amz-Signature=***" in text and "sig=***" in text
    assert "http://***@proxy.example:3128" in text
    assert "cdn-lfs.hf.co/repos/ab/cd/x?" in text  # where it went is still said


def test_third_party_debug_chatter_stays_off_at_debug_level(restore_logging: None) -> None:
    setup_logging("debug")
    for name in ("httpcore2", "httpx2", "urllib3", "aligo"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING


def test_a_retried_failure_of_the_catalogue_is_one_line_and_a_bug_keeps_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A catalogue that does not answer (here SQLite locked by another connection) says the same at
    every retry; any other failure is logged with its traceback."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from relayd.catalogue.db import unreachable
    from relayd.logs import log_failure

    database = tmp_path / "locked.db"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{database}", connect_args={"timeout": 0})
    with pytest.raises(OperationalError) as locked, engine.connect() as connection:
        connection.execute(text("SELECT * FROM t"))
    holder.close()
    engine.dispose()
    assert unreachable(locked.value) == "database is locked"
    assert unreachable(ValueError("a bug")) is None
    logger = logging.getLogger("relayd.test")
    with caplog.at_level(logging.WARNING, logger="relayd.test"):
        log_failure(logger, "claiming transfers failed; trying again shortly", locked.value)
        log_failure(logger, "claiming transfers failed; trying again shortly", ValueError("a bug"))
    outage, bug = caplog.records
    assert outage.levelno == logging.WARNING
    assert outage.getMessage() == (
        "claiming transfers failed; trying again shortly: the catalogue did not answer: database is locked"
    )
    assert caplog.handler.format(outage).endswith("database is locked"), "no traceback"
    assert bug.levelno == logging.ERROR
    assert bug.getMessage() == "claiming transfers failed; trying again shortly"
    assert caplog.handler.format(bug).endswith("ValueError: a bug"), "with its traceback"
