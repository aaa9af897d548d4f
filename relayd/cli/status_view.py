"""How `relayctl status` shows what relayd.catalogue.queries found as text: lines sized to the terminal,
with progress bars (relayd/cli/term.py). The JSON document is relayd/cli/status_json.py.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from relayd.catalogue.queries import (
    BLOCKED,
    DAEMON_NONE,
    DAEMON_RUNNING,
    DONE,
    INTERRUPTED,
    OPEN_STATES,
    RUNNING,
    WAITING,
    Avoided,
    BlockedItem,
    DaemonStatus,
    FileHop,
    RepoAvoided,
    RepoDetail,
    RepoSummary,
    ServiceFact,
    StuckItem,
    Summary,
)
from relayd.cli.status_json import SIZE_NAMES, scrub
from relayd.cli.term import Cell, bar, can_draw, length, pack, render, wrap
from relayd.text import safe_text
from relayd.units import format_duration, format_rate, format_size


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    return f"in {format_duration(-seconds)}" if seconds < 0 else f"{format_duration(seconds)} ago"


def _states_text(states: dict[str, int]) -> str:
    return ", ".join(f"{states[state]} {state}" for state in (*OPEN_STATES, INTERRUPTED) if states.get(state))


def _poll_text(repo: RepoSummary) -> str:
    text = f"poll {repo.poll_state}"
    return f"{text}: {safe_text(repo.poll_error)}" if repo.poll_error else text


def _item_text(item: BlockedItem | StuckItem) -> str:
    """Return where a blocked or stuck item is and its last error, e.g. ``org/x  download  a.bin: …``."""
    if item.kind == "poll":
        where = f"{item.repo}  poll"
    elif item.kind == "snapshot":
        where = f"{item.repo}  {item.hop} (whole snapshot)"
    else:
        where = f"{item.repo}  {item.hop}  {item.path}"
    error_class = f" [{item.error_class}]" if item.error_class else ""
    return f"{where}: {safe_text(item.error or 'no reason recorded')}{error_class}"


def _blocked_lines(items: list[BlockedItem], now: datetime, width: int | None = None) -> list[str]:
    lines = []
    for item in items:
        since = f" (since {_ago(item.since, now)})" if item.since else ""
        lines += wrap(f"{_item_text(item)}{since}", width, "  ", " " * 6)
        if item.hint:
            lines += wrap(safe_text(item.hint), width, "      hint: ")
    return lines


def _value_text(key: str, value: Any) -> str:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (key in SIZE_NAMES or key.endswith("bytes"))
    ):
        return format_size(value)
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def service_lines(facts: list[ServiceFact], now: datetime, width: int | None = None) -> list[str]:
    """Return the daemon's published facts, one per line (wrapped to *width*): key, the values that are
    set, age."""
    lines = ["SERVICE"]
    if not any(fact.key == "daemon" for fact in facts):
        lines.append("  daemon  no heartbeat published (is relayd running on this catalogue?)")
    key_width = max((len(fact.key) for fact in facts), default=0)
    for fact in facts:
        value = ", ".join(f"{k}={_value_text(k, v)}" for k, v in scrub(fact.value).items() if v is not None)
        text = f"{value}  ({_ago(fact.updated_at, now)})" if value else f"({_ago(fact.updated_at, now)})"
        lines += wrap(text, width, f"  {fact.key.ljust(key_width)}  ")
    return lines


BAR_WIDTHS = (20, 6)  # the widest and the narrowest bar drawn; narrower than that, none
NAME_ALIGN = 32  # names up to this long are padded so that the bars line up


def _progress(repo: RepoSummary) -> tuple[float, int]:
    """Return how much of the snapshot's work is done over all its hops (0 to 1), and the bytes left."""
    hops = [hop for hop in repo.hops if hop.files_total]
    total = sum(hop.bytes_total for hop in hops)
    done = sum(min(hop.bytes_done, hop.bytes_total) for hop in hops)
    if repo.snapshot is not None and repo.snapshot.state == DONE:
        return 1.0, 0
    if total:
        return done / total, total - done
    files = sum(hop.files_total for hop in hops)
    return (sum(hop.files_done for hop in hops) / files if files else 0.0), 0


def _eta_text(seconds: float) -> str:
    """Return an ETA as precisely as it is worth: seconds under a minute, then minutes, then hours."""
    if seconds < 60 or seconds >= 3600:
        return format_duration(seconds)
    return f"{round(seconds / 60)}m"


def _rate_text(rate: float) -> str:
    """Return a rate with a decimal only while it has one or two digits: '8.5 MiB/s', '65 MiB/s'."""
    number, unit = format_size(rate).split(" ")
    if float(number) >= 10:
        number = f"{float(number):.0f}"
    return f"{number} {unit}/s"


#: The short names the built-in hops declare (``Hop.short_name``; tests/hops/test_contract.py keeps
#: them equal). Status must answer within 0.3 s (docs/benchmarks.md), and loading the built-in hops'
#: modules to read them would take a third of that.
BUILT_IN_SHORT_NAMES = {
    "download": "dl",
    "pan_upload": "up",
    "vm_pull": "vm",
    "lfs_push": "push",
    "local_copy": "copy",
    "ms_upload": "ms",
}


@cache
def short_name(hop: str) -> str:
    """Return what *hop* is called in the one-line-per-repo view: the short name its class declares
    (``Hop.short_name``), or its own name when it declares none or is not installed here."""
    if hop in BUILT_IN_SHORT_NAMES:
        return BUILT_IN_SHORT_NAMES[hop]
    from relayd.hops import loadable

    found = loadable([hop]).get(hop)
    return found.short() if found is not None else hop


def _hop_counts(repo: RepoSummary, compact: int) -> Cell:
    """Return each hop's files done of its files, in route order: ``dl 8/8 up 5/8 vm 3/8``. More
    *compact*: 1, a hop that is through shows ✓ (``dl✓ up 5/8``); 2, also the total once when every hop
    has the same (``dl✓ up 5 vm 3 of 8``)."""
    totals = {hop.files_total for hop in repo.hops}
    shared = compact >= 2 and len(totals) == 1 and len(repo.hops) > 1
    cell: Cell = []
    counted = False
    for hop in repo.hops:
        short = short_name(hop.hop)
        through = hop.files_total > 0 and hop.files_done == hop.files_total
        role = "bad" if hop.states.get(BLOCKED) else "ok" if through else ""
        if hop.files_total == 0:
            count = " -"
        elif compact and through and can_draw():
            count = "✓"
        else:
            count = f" {hop.files_done}" if shared else f" {hop.files_done}/{hop.files_total}"
            counted = True
        cell += [(" " if cell else "", ""), (f"{short}{count}", role)]
    if shared and counted:
        cell.append((f" of {totals.pop()}", ""))
    return cell


def _flags(repo: RepoSummary) -> list[Cell]:
    """Return what a person should notice about *repo*: blocked and waiting work, the poll, the snapshot's
    finishing step, a pause."""
    flags: list[Cell] = []
    if repo.blocked:
        flags.append([(f"{repo.blocked} blocked", "bad")])
    waiting = sum(hop.states.get(WAITING, 0) for hop in repo.hops)
    if waiting:
        flags.append([(f"{waiting} waiting", "warn")])
    if repo.finish is not None and repo.finish.state != DONE:
        flags.append([(f"finish {repo.finish.state}", "bad" if repo.finish.state == BLOCKED else "")])
    if repo.poll_state in (WAITING, BLOCKED):
        flags.append([(f"poll {repo.poll_state}", "bad" if repo.poll_state == BLOCKED else "warn")])
    elif repo.poll_state == "new":
        flags.append([("not polled yet", "dim")])
    if repo.paused:
        flags.append([("PAUSED", "warn")])
    return flags


def daemon_lines(daemon: DaemonStatus, width: int | None = None) -> list[str]:
    """Return a heading that says the daemon is not running, with what to do (none while it runs)."""
    if daemon.state == DAEMON_RUNNING:
        return []
    heading = "NOT RUNNING" if daemon.state == DAEMON_NONE else daemon.state.upper()
    lines = wrap(f"DAEMON {heading}: {daemon.detail}", width, "", "  ")
    lines += wrap("nothing moves until it runs; transfers it left running show as interrupted", width, "  ")
    if daemon.hint:
        lines += wrap(daemon.hint, width, "      hint: ")
    return [*lines, ""]


def stuck_lines(items: list[StuckItem], total: int, now: datetime, width: int | None = None) -> list[str]:
    """Return what keeps failing for longer than retry.surface_after while relayd retries it: each item
    with its last error, attempts, how long and what to check (none when nothing is stuck)."""
    if not total:
        return []
    more = f", showing {len(items)}" if len(items) < total else ""
    lines = wrap(
        f"STUCK {total}{more} (failing for longer than retry.surface_after; still retrying)", width, ""
    )
    for item in items:
        lines += wrap(_item_text(item), width, "  ", " " * 6)
        since = _ago(item.failing_since, now).removesuffix(" ago")
        retry = f", next try {_ago(item.next_attempt_at, now)}" if item.next_attempt_at else ""
        state = f", {item.state}" if item.state != WAITING else ""
        lines += wrap(f"{item.attempts} attempt(s), failing for {since}{retry}{state}", width, " " * 6)
        lines += wrap(safe_text(item.hint), width, "      check: ")
    if len(items) < total:
        lines.append("  … see `relayctl status REPO` for the rest")
    return [*lines, ""]


def _label(repo: RepoSummary) -> str:
    return repo.name if repo.revision == "main" else f"{repo.name}@{repo.revision}"


def _repo_cells(
    repo: RepoSummary, name_width: int, bar_width: int, compact: int, flags: bool = True
) -> list[Cell]:
    """Return the cells of *repo*'s line: name, bar and percentage, hop counts, rate and ETA, and (with
    *flags*) what needs attention."""
    cells: list[Cell] = [[(_label(repo).ljust(name_width), "head")]]
    if repo.snapshot is None:
        return [*cells, [("no snapshot yet", "dim")], *(_flags(repo) if flags else [])]
    fraction, remaining = _progress(repo)
    done = repo.snapshot.state == DONE
    gauge: Cell = bar(fraction, bar_width, "ok" if done else "bar") if bar_width else []
    cells.append([*gauge, (" " if gauge else "", ""), (f"{int(fraction * 100):3d}%", "ok" if done else "")])
    cells.append(_hop_counts(repo, compact))
    if done:
        cells.append([("done", "ok")])
    elif repo.rate:
        eta = f" ETA {_eta_text(remaining / repo.rate)}" if remaining else ""
        cells.append([(_rate_text(repo.rate) + eta, "")])
    return cells + (_flags(repo) if flags else [])


def repo_lines(repos: list[RepoSummary], width: int | None, colour: bool) -> list[str]:
    """Return one line per repo, fitted to *width* (when it has one): the name, a progress bar over the
    whole snapshot, each hop's files done, the rate and ETA, and what needs attention. Where a line
    would be too wide the bar narrows, the hop counts grow more compact, then the bar goes; what still
    does not fit continues on the next line, indented: nothing is cut. A waiting poll's error follows
    its repo, wrapped."""

    def room(repo: RepoSummary, name_width: int, compact: int, flags: bool) -> int:
        """The columns left for a bar (and its space) on *repo*'s line, with or without its flags."""
        if width is None:
            return BAR_WIDTHS[0]
        cells = _repo_cells(repo, name_width, 0, compact, flags)
        return width - 2 - sum(length(cell) for cell in cells) - 2 * (len(cells) - 1) - 1

    # Names up to a third of the width are padded, so that the bars line up.
    align = NAME_ALIGN if width is None else min(NAME_ALIGN, width // 3)
    name_width = max((len(_label(repo)) for repo in repos if len(_label(repo)) <= align), default=0)
    # The first layout that fits, as (how compact the hop counts are, a bar or not, the flags on the
    # line too): a bar matters more than the flags, which may continue on the next line.
    tries = [
        (compact, drawn, flags) for drawn in (True, False) for flags in (True, False) for compact in (0, 1, 2)
    ]
    layouts: dict[str, tuple[int, bool, bool]] = {}
    for repo in repos:
        fits = [
            (compact, drawn, flags)
            for compact, drawn, flags in tries
            if room(repo, name_width, compact, flags) >= (BAR_WIDTHS[1] if drawn else -1)
        ]
        layouts[repo.name] = fits[0] if fits else (0, False, False)
    bar_width = min(
        [BAR_WIDTHS[0]]
        + [
            room(repo, name_width, compact, flags)
            for repo in repos
            for compact, drawn, flags in [layouts[repo.name]]
            if drawn
        ]
    )
    lines: list[str] = []
    for repo in repos:
        compact, drawn, _ = layouts[repo.name]
        cells = _repo_cells(repo, name_width, bar_width if drawn else 0, compact)
        lines += [render(line, colour) for line in pack(cells, width, indent="  ", continuation="      ")]
        if repo.poll_state == WAITING and repo.poll_error:
            lines += [
                render([(line, "dim")], colour)
                for line in wrap(f"poll: {safe_text(repo.poll_error)}", width, "      ")
            ]
    return lines


def summary_lines(
    summary: Summary, now: datetime, width: int | None = None, colour: bool = False
) -> list[str]:
    """Return the text view of every repo: the daemon if it is not running, blocked and stuck items
    first, then one line per repo, then what the daemon publishes; every line fits *width* (None: no
    limit), coloured when *colour*."""
    lines: list[str] = daemon_lines(summary.daemon, width)
    for item in summary.unserved:
        lines += wrap(render([("NOT SERVED", "bad")], colour) + f" {item.hint}", width, "", "  ")
    if summary.unserved:
        lines.append("")
    if summary.blocked_total:
        shown = len(summary.blocked)
        more = f", showing {shown}" if shown < summary.blocked_total else ""
        lines.append(render([(f"BLOCKED {summary.blocked_total}{more}", "bad")], colour))
        lines += _blocked_lines(summary.blocked, now, width)
        if shown < summary.blocked_total:
            lines.append("  … see `relayctl status REPO` for the rest")
        lines.append("")
    lines += stuck_lines(summary.stuck, summary.stuck_total, now, width)
    lines.append(render([(f"REPOS {len(summary.repos)}", "head")], colour))
    if not summary.repos:
        lines.append("  none (add one with `relayctl add OWNER/NAME`)")
    lines += repo_lines(summary.repos, width, colour)
    lines.append("")
    lines += service_lines(summary.service, now, width)
    return lines


def _file_hop_text(step: FileHop) -> str:
    if step.state is None:
        return "-"
    if step.state == DONE:
        if not step.skipped:
            return DONE
        return f"skipped ({AVOIDED_WORDS.get(step.skipped_reason or '', 'already there')})"
    text = step.state
    if step.bytes_done:
        text += f" {format_size(step.bytes_done)}/{format_size(step.bytes_total)}"
    if step.state == RUNNING and step.rate:
        text += f" {format_rate(step.rate)}"
        if step.eta_seconds is not None:
            text += f" ETA {format_duration(step.eta_seconds)}"
    if step.state == INTERRUPTED:
        text += " (daemon not running)"
    return text


#: What `relayctl status` says for each reason a hop moved nothing (relayd.catalogue.rules).
AVOIDED_WORDS = {
    "destination_had_it": "destination had it",
    "server_had_it": "destination had it",
    "rapid_upload": "rapid upload",
    "staged_already": "staged already",
    "drive_copy_reused": "drive copy reused",
    "unchanged": "unchanged file",
}


def avoided_lines(avoided: RepoAvoided, width: int | None = None) -> list[str]:
    """Return the lines saying what the repo's hops did not move: this snapshot's, by hop and reason,
    then the total over its snapshots."""
    if not avoided.total:
        return []

    def parts(items: list[Avoided]) -> str:
        return ", ".join(
            f"{short_name(item.hop)} {format_size(item.bytes)} {AVOIDED_WORDS.get(item.reason, item.reason)}"
            for item in items
        )

    lines = []
    if avoided.snapshot:
        this = f"bytes avoided, this snapshot: {format_size(RepoAvoided.bytes_of(avoided.snapshot))}"
        lines += wrap(f"{this} ({parts(avoided.snapshot)})", width, "  ", " " * 6)
    total = f"bytes avoided, all snapshots: {format_size(RepoAvoided.bytes_of(avoided.total))}"
    lines += wrap(f"{total} ({parts(avoided.total)})", width, "  ", " " * 6)
    return lines


def detail_lines(detail: RepoDetail, now: datetime, width: int | None = None) -> list[str]:
    """Return the text view of one repo: its summary, what blocks it, then every file, blocked first;
    long lines wrap at *width* (None: no limit)."""
    repo = detail.repo
    snapshot = repo.snapshot
    heading: list[Cell] = [
        [(repo.name, "")],
        [(f"{repo.repo_type}@{repo.revision}", "")],
        [(f"head {(repo.head_commit or '-')[:12]}", "")],
        [("PAUSED" if repo.paused else "", "")],
    ]
    lines = daemon_lines(detail.daemon, width)
    lines += [render(line, False) for line in pack(heading, width, continuation="  ")]
    schedule = f"every {format_duration(repo.every)}; next poll {_ago(repo.next_poll_at, now)}"
    lines += wrap(f"{_poll_text(repo)}; {schedule}", width, "  ", " " * 6)
    if repo.poll_hint:
        lines += wrap(safe_text(repo.poll_hint), width, "      hint: ")
    if snapshot is None:
        lines.append("  no snapshot yet")
    else:
        seen = f"({snapshot.state}, seen {_ago(snapshot.seen_at, now)})"
        size = f"{snapshot.files} files, {format_size(snapshot.bytes)}"
        lines += wrap(f"snapshot {snapshot.commit[:12]} {seen}: {size}", width, "  ", " " * 6)
    hop_width = max((len(hop.hop) for hop in repo.hops), default=0)
    for hop in repo.hops:
        hop_cells: list[Cell] = [
            [(hop.hop.ljust(hop_width), "")],
            [(f"{hop.files_done}/{hop.files_total} files", "")],
            [(f"{format_size(hop.bytes_done)}/{format_size(hop.bytes_total)}", "")],
            [(_states_text(hop.states), "")],
            [(format_rate(hop.rate) if hop.rate else "", "")],
        ]
        lines += [render(line, False) for line in pack(hop_cells, width, "  ", " " * (4 + hop_width))]
    if repo.finish is not None:
        lines.append(f"  finish ({repo.finish.hop}, whole snapshot): {repo.finish.state}")
    lines += avoided_lines(detail.avoided, width)
    others = [item for item in detail.blocked if item.kind != "transfer"]
    blocked_files = sum(1 for item in detail.files if item.state == BLOCKED)
    if others or blocked_files:
        lines.append("")
        lines.append(f"BLOCKED {len(others) + blocked_files}")
        lines += _blocked_lines(others, now, width)
        if blocked_files:
            lines.append(f"  {blocked_files} file(s), listed first below")
    lines.append("")
    lines += stuck_lines(detail.stuck, len(detail.stuck), now, width)
    lines.append(f"FILES {len(detail.files)}")
    for item in detail.files:
        cells: list[Cell] = [[(item.path, "")], [(format_size(item.size), "")]]
        cells += [[(f"{step.hop} {_file_hop_text(step)}", "")] for step in item.hops]
        seps = ["", "  ", *(["  "] + [" · "] * (len(item.hops) - 1) if item.hops else [])]
        lines += [render(line, False) for line in pack(cells, width, "  ", " " * 6, seps=seps)]
        for step in item.hops:
            if step.error and step.state in OPEN_STATES:
                error_class = f" [{step.error_class}]" if step.error_class else ""
                retry = ""
                if step.state == WAITING and step.next_attempt_at:
                    retry = f", retry {_ago(step.next_attempt_at, now)}"
                said = f"{step.hop}: {safe_text(step.error)}{error_class} (attempt {step.attempts}{retry})"
                lines += wrap(said, width, " " * 6)
                if step.hint:
                    lines += wrap(safe_text(step.hint), width, "      hint: ")
    lines.append("")
    lines += service_lines(detail.service, now, width)
    return lines
