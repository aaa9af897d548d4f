"""Text that came from a peer, made safe to store and to print on a person's terminal.

Error messages carry what servers, VMs and child processes said. Before such text is stored in the
catalogue or printed by relayctl it is bounded (a hostile peer cannot grow the catalogue or flood a
terminal) and stripped of terminal escape sequences and control characters (it cannot move the cursor,
rewrite earlier lines, set the window title or reverse the reading order).
"""

from __future__ import annotations

import re

#: The longest error text kept, in characters; longer text ends with TRUNCATED.
TEXT_LIMIT = 4096
TRUNCATED = "… (truncated)"

# ESC-introduced sequences: CSI (ESC [ … final byte), OSC/DCS/PM/APC/SOS strings (ended by BEL or
# ESC \, or by the end of the text), then any other two-byte ESC sequence.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\|$)"
    r"|\x1b[ -~]?"
)
# What is left of control characters after the sequences are gone: C0 but newline, DEL, C1 (0x9b is
# an 8-bit CSI on some terminals), and the Unicode bidirectional overrides and isolates.
_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://)[^/@]*@")


def public_url(url: str) -> str:
    """Return *url* without any ``user:password@`` part."""
    return _USERINFO.sub(r"\1", url)


def safe_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """Return *text* without escape sequences or control characters (newlines stay, tabs become
    spaces), at most *limit* characters long."""
    # Cut before cleaning so a huge text costs little; what cleaning removes is then the only slack.
    cut = len(text) > limit * 4
    if cut:
        text = text[: limit * 4]
    text = _CONTROLS.sub(lambda match: " " if match.group() == "\t" else "", _ESCAPES.sub("", text))
    if cut or len(text) > limit:
        text = text[: limit - len(TRUNCATED)] + TRUNCATED
    return text


def safe_optional(text: str | None, limit: int = TEXT_LIMIT) -> str | None:
    """Return ``safe_text(text)``, or None for None."""
    return None if text is None else safe_text(text, limit)
