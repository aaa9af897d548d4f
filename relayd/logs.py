"""Logging to stderr in a journald-friendly form, with secrets scrubbed from every record.

Two kinds of secret are scrubbed: the values relayd registers (tokens, as it reads them) and those it
cannot know in advance, which travel in URLs: the query of a signed URL (the Hub's CDN ``Signature``,
``Policy``, ``Key-Pair-Id``; S3's and OSS's ``X-Amz-*``/``x-oss-*``; the sandbox's ``sig``) and a
URL's userinfo (a proxy's password). Libraries log both at debug level: httpcore2 prints response
headers (a redirect's ``Location`` is a signed URL), urllib3 prints each request line. Their debug
chatter is kept off, and whatever reaches a handler is scrubbed all the same.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from urllib.parse import urlsplit

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


# A query string: "?" then name=value pairs, up to whitespace, a quote or a bracket (URLs are printed
# inside reprs of bytes, tuples and dicts). Every value is replaced, whatever its name.
_QUERY = re.compile(r"\?[^\s'\"<>()\[\]{}#?]*=[^\s'\"<>()\[\]{}#]*")
_QUERY_VALUE = re.compile(r"=[^&;]*")
# The userinfo of a URL: scheme://user[:password]@
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"<>]+@")


def scrub_urls(text: str) -> str:
    """Return *text* with the value of every query parameter and the userinfo of every URL in it
    replaced by '***' (``?sig=abc&expires=1`` → ``?sig=***&expires=***``)."""
    if "?" in text:
        text = _QUERY.sub(lambda match: _QUERY_VALUE.sub("=***", match.group(0)), text)
    if "@" in text:
        text = _USERINFO.sub(r"\1***@", text)
    return text


def url_host(url: str) -> str:
    """Return *url* cut to ``scheme://host[:port]``, for naming a URL whose path or query may be its
    secret (a webhook's token URL)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if not parts.scheme or not host:
        return "<url>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


class SecretScrubber(logging.Filter):
    """Replace every registered secret value, every URL query value and every URL userinfo in log
    records with '***'."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 6:
            with self._lock:
                self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        with self._lock:
            secrets = list(self._secrets)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return scrub_urls(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


SCRUBBER = SecretScrubber()


class JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority (``<6>``) so journald keeps the level."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def setup_logging(level: str = "info") -> None:
    """Send logs to stderr: journald-style under systemd, timestamped otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(SCRUBBER)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party libraries talk too much at INFO; their warnings still come through.
    for noisy in (
        "alembic",
        "apscheduler",
        "httpx",
        "httpx2",
        "httpcore",
        "httpcore2",
        "urllib3",
        "aligo",
        "watchdog",
        "filelock",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def log_failure(logger: logging.Logger, message: str, exc: BaseException) -> None:
    """Log *message* for a failure that is tried again: one line when the catalogue did not answer (an
    outage says the same each time), else with the traceback (a bug's is needed once)."""
    from relayd.catalogue.db import unreachable

    reason = unreachable(exc)
    if reason is None:
        logger.error("%s", message, exc_info=exc)
    else:
        logger.warning("%s: the catalogue did not answer: %s", message, reason)
