"""The demo's tables: the verification of each file at every place, printed with rich."""

from __future__ import annotations

from typing import Any


def show_table(table: Any) -> None:
    """Print a rich table: to a terminal at its width; elsewhere (a log, a pipe, CI) wide enough
    that no path is cut."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    console.print(table)


def print_route_table(rows: list[Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("file", "Hub", "drive", "VM", "clone", "ok"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.path, row.hub[:12], row.drive[:12], row.vm[:12], row.clone[:12], "✔" if row.ok else "✘"
        )
    show_table(table)


def print_table(rows: list[tuple[str, str, str, bool]], columns: tuple[str, str]) -> None:
    from rich.table import Table

    table = Table(title="verification (sha256)")
    table.add_column("file")
    table.add_column(columns[0])
    table.add_column(columns[1])
    table.add_column("ok")
    for path, source, landed, ok in rows:
        table.add_row(path, source[:16], landed[:16], "✔" if ok else "✘")
    show_table(table)
