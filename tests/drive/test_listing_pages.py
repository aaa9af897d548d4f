"""How a paged folder listing is followed (relayd.drive.answers.listed_items), for both backends."""

from __future__ import annotations

from typing import Any

from relayd.drive.answers import listed_items


def pages(*answers: dict[str, Any]) -> tuple[list[str | None], Any]:
    """Return the markers asked for, and a fetch that hands out *answers* in turn."""
    asked: list[str | None] = []
    queue = list(answers)

    def fetch(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(body.get("marker"))
        return queue.pop(0)

    return asked, fetch


def test_every_page_is_followed_to_the_last() -> None:
    asked, fetch = pages(
        {"items": [{"name": "a"}], "next_marker": "m1"},
        {"items": [{"name": "b"}], "next_marker": "m2"},
        {"items": [{"name": "c"}], "next_marker": ""},
    )
    assert [item["name"] for item in listed_items(fetch, {"marker": None})] == ["a", "b", "c"]
    assert asked == [None, "m1", "m2"]


def test_a_marker_handed_out_twice_ends_the_listing() -> None:
    asked, fetch = pages(
        {"items": [{"name": "a"}], "next_marker": "m1"},
        {"items": [{"name": "b"}], "next_marker": "m1"},
    )
    assert [item["name"] for item in listed_items(fetch, {})] == ["a", "b"]
    assert asked == [None, "m1"]


def test_a_folder_that_is_gone_lists_nothing() -> None:
    _asked, fetch = pages({"code": "NotFound.File", "message": "not found"})
    assert list(listed_items(fetch, {})) == []
