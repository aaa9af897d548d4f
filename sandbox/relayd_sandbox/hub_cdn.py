"""The fake Hub's CDN origin, as the Hub's Xet bridge behind CloudFront answers: URLs signed as
CloudFront signs them (a custom policy under a key pair that can be replaced, optionally bound to one
Range), checked before anything is served, and CloudFront's and the storage origin's refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import Literal
from urllib.parse import quote, urlencode

from relayd_sandbox.hub_faults import FaultKind, FaultRule, Refusal
from relayd_sandbox.hub_http import OriginHandler, xet_hash_of

BRIDGE = "xet-bridge-us"
# CloudFront's refusals of a signed URL (its own XML, text/xml): AWS knowledge center,
# "troubleshoot signed URL or signed cookies".
_CLOUDFRONT_REFUSALS: dict[str, tuple[str, str]] = {
    "expired": ("AccessDenied", "Access denied"),
    "missing-key": ("MissingKey", "Missing Key-Pair-Id query parameter or cookie value"),
    "unknown-key": ("InvalidKey", "Unknown Key"),
}


class CloudFrontSigner:
    """Sign CDN URLs as CloudFront signs the Hub's Xet-bridge URLs (a custom policy: ``Expires``,
    ``Policy``, ``Signature``, ``Key-Pair-Id``), tell whether a request's URL is signed for it and
    unexpired, and keep the Range each range-bound URL is bound to."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._key = os.urandom(32)
        self._key_pair_id = _key_pair_id()
        self._last_expires = 0
        self._bound_ranges: dict[str, str] = {}

    def sign(self, resource: str, name: str, ttl: float, *, bound_range: str | None = None) -> str:
        """Return *resource* (a URL on the CDN) signed for *ttl* seconds, rounded up to whole seconds,
        and served as the file *name*. *bound_range* binds it to one Range.

        Every call gives a different URL, like the Hub's signed URLs on every HEAD: a URL signed within
        the same second as the last one expires a second later instead.
        """
        with self._lock:
            expires = max(math.ceil(self._clock() + ttl), self._last_expires + 1)
            self._last_expires = expires
            key, key_pair_id = self._key, self._key_pair_id
        statement = {"Resource": f"{resource}*", "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}
        policy = json.dumps({"Statement": [statement]}, separators=(",", ":")).encode()
        signature = _cloudfront_b64(hmac.new(key, policy, hashlib.sha256).digest())
        query = {
            "X-Xet-Cas-Uid": "public",
            "response-content-disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";",
            "Expires": str(expires),
            "Policy": _cloudfront_b64(policy),
            "Signature": signature,
            "Key-Pair-Id": key_pair_id,
        }
        if bound_range is not None:
            with self._lock:
                self._bound_ranges[signature] = bound_range
        return f"{resource}?{urlencode(query)}"

    def rotate(self) -> None:
        """Replace the signing key pair: every URL signed so far is refused ("Unknown Key")."""
        with self._lock:
            self._key = os.urandom(32)
            self._key_pair_id = _key_pair_id()

    def check(self, url: str, query: Mapping[str, str]) -> Literal["ok", Refusal]:
        """Tell whether a request for *url* (without its query) with *query* is signed for it and
        unexpired, or how CloudFront refuses it."""
        with self._lock:
            key, key_pair_id = self._key, self._key_pair_id
        given = query.get("Key-Pair-Id", "")
        if not given:
            return "missing-key"
        if given != key_pair_id:
            return "unknown-key"
        try:
            policy = _cloudfront_unb64(query.get("Policy", ""))
            expected = _cloudfront_b64(hmac.new(key, policy, hashlib.sha256).digest())
            statement = json.loads(policy)["Statement"][0]
            resource = str(statement["Resource"])
            expires = int(statement["Condition"]["DateLessThan"]["AWS:EpochTime"])
        except (ValueError, KeyError, TypeError, IndexError):
            return "expired"  # CloudFront answers a policy it cannot use with the same AccessDenied
        covered = url.startswith(resource[:-1]) if resource.endswith("*") else url == resource
        signed = hmac.compare_digest(query.get("Signature", "").encode(), expected.encode())
        if not (signed and covered) or self._clock() >= expires:
            return "expired"
        return "ok"

    def bind_range(self, signature: str, requested: str) -> bool:
        """Bind the signed URL *signature* to *requested* (a Range value, "" for none) unless it is
        bound already; return whether *requested* is the range it is bound to."""
        with self._lock:
            return self._bound_ranges.setdefault(signature, requested) == requested


def _key_pair_id() -> str:
    """Return a CloudFront-like public key id (``K`` and 13 base32 characters)."""
    return "K" + base64.b32encode(os.urandom(10)).decode()[:13]


def _cloudfront_b64(data: bytes) -> str:
    """Base64 as CloudFront puts it in a URL: ``+``, ``=`` and ``/`` become ``-``, ``_`` and ``~``."""
    return base64.b64encode(data).decode().translate(str.maketrans("+=/", "-_~"))


def _cloudfront_unb64(text: str) -> bytes:
    return base64.b64decode(text.translate(str.maketrans("-_~", "+=/")).encode(), validate=True)


class CdnHandler(OriginHandler):
    """The CDN origin, as the Hub's Xet bridge behind CloudFront answers it:
    ``/xet-bridge-us/{repo object id}/{sha256}?X-Xet-Cas-Uid=…&response-content-disposition=…&Expires=…
    &Policy=…&Signature=…&Key-Pair-Id=…``. CloudFront checks the signature first and refuses with its
    own XML (text/xml); what passes reaches the storage origin, whose errors are S3's
    (application/xml). No request is counted against the Hub's rate limits."""

    def _route(self, path: str) -> None:
        if self._early_faults("cdn"):
            return
        hub = self.hub
        query = {name: values[-1] for name, values in self._query.items()}
        verdict = hub.cdn_signer.check(f"{hub.cdn_url}{path}", query)
        refused = hub.faults.take(FaultKind.EXPIRE, "cdn", self._target)
        if verdict != "ok" or refused is not None:
            self._cloudfront_refusal(refused.reason if refused is not None else verdict)
            return
        if hub.cdn_reject_authorization and self.headers.get("Authorization") is not None:
            self._origin_error(400, "InvalidArgument", "Only one auth mechanism allowed")
            return
        requested = self.headers.get("Range")
        if hub.faults.take(FaultKind.RANGE_BOUND, "cdn", self._target) and not hub.cdn_signer.bind_range(
            query.get("Signature", ""), requested or ""
        ):
            self._reply(
                403, b"Auth failed: invalid range", {"X-Cache": "Error from cloudfront"}, "text/plain"
            )
            return
        parts = path.split("/")[1:]
        blob = hub.store.get(parts[2]) if len(parts) == 3 and parts[0] == BRIDGE else None
        if blob is None:
            self._origin_error(404, "NoSuchKey", "The specified key does not exist.")
            return
        if blob.sha256 in hub.xet_only:
            # Reports give only the status (huggingface_hub#4330, xet-core#592); the body is a guess.
            self._reply(400, b"Bad Request", {"X-Cache": "Error from cloudfront"}, "text/plain")
            return
        headers = {
            "ETag": f'"{xet_hash_of(blob.sha256)}"',
            "Content-Disposition": query.get("response-content-disposition") or "inline",
            "X-Cache": "Miss from cloudfront",
            "Via": "1.1 fake.cloudfront.net (CloudFront)",
        }
        self._serve_content("cdn", blob, headers)

    def _throttled(self, rule: FaultRule) -> None:
        self._reply(429, b"Too Many Requests", {"Retry-After": str(rule.reset_in)}, "text/plain")

    def _cloudfront_refusal(self, reason: str) -> None:
        code, message = _CLOUDFRONT_REFUSALS[reason]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        headers = {"Server": "CloudFront", "X-Cache": "Error from cloudfront"}
        self._reply(403, body.encode(), headers, content_type="text/xml")

    def _origin_error(self, status: int, code: str, message: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ).encode()
        self._reply(status, body, {"X-Cache": "Error from cloudfront"}, content_type="application/xml")
