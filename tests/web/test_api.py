"""The JSON API: the documents equal relayctl's, who may read, who may steer (token, Origin, JSON), each
verb, and the caching that keeps an open page cheap."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from relayd.catalogue.queries import DRIVE_COPY_REUSED, RAPID_UPLOAD, SERVER_HAD_IT, STAGED_ALREADY
from tests.support.webbox import TOKEN, WebBox, timeless

# -- the documents ----------------------------------------------------------------------------------


def test_the_status_documents_equal_relayctl_status_json(populated: WebBox) -> None:
    populated.serve()
    summary = populated.get("api/v1/status")
    assert summary.status_code == 200
    assert summary.headers["Content-Type"] == "application/json"
    cli = populated.relayctl("status", "--json")
    assert cli.exit_code == 0, cli.output
    assert timeless(summary.json()) == timeless(json.loads(cli.stdout))
    assert summary.json()["blocked"][0]["hint"] == "log in again with `relayctl drive login`"

    for name in ("org/stuck", "org/calm"):
        detail = populated.get(f"api/v1/status/{name}")
        assert detail.status_code == 200
        local = json.loads(populated.relayctl("status", name, "--json").stdout)
        assert timeless(detail.json()) == timeless(local)
    # A slash in the name may come percent-encoded, as the page sends it.
    assert populated.get("api/v1/status/org%2Fstuck").json()["repo"]["name"] == "org/stuck"

    listed = populated.get("api/v1/repos").json()
    assert listed == json.loads(populated.relayctl("list", "--json").stdout)


def test_an_unknown_repo_or_path_is_404(populated: WebBox) -> None:
    populated.serve()
    missing = populated.get("api/v1/status/org/none")
    assert missing.status_code == 404
    assert missing.json() == {"format": 1, "error": "no repo named 'org/none' (see `relayctl list`)"}
    assert populated.get("api/v1/nothing").status_code == 404
    assert populated.get("secrets.txt").status_code == 404


def test_the_text_view_is_what_relayctl_status_prints(populated: WebBox) -> None:
    populated.serve()
    text = populated.get("api/v1/status", params={"view": "text"}).json()["lines"]
    assert "\n".join(text) == populated.relayctl("status").stdout.rstrip("\n")
    detail = populated.get("api/v1/status/org/stuck", params={"view": "text", "width": "60"}).json()["lines"]
    assert max(len(line) for line in detail) <= 60
    assert any("hint: log in again" in line for line in detail)


def test_an_unchanged_document_is_not_sent_again_and_big_ones_are_gzipped(box: WebBox) -> None:
    box.add_repo("org/big", {f"shard-{index:04d}.bin": 1000 + index for index in range(300)})
    box.serve()
    first = box.get("api/v1/status/org/big", headers={"Accept-Encoding": "gzip"}, stream=True)
    assert first.headers["Content-Encoding"] == "gzip"
    body = json.loads(gzip.decompress(first.raw.read()))
    assert len(body["files"]) == 300
    again = box.get("api/v1/status/org/big", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert again.content == b""
    box.store.publish("daemon", {"pid": 1, "state": "running"})  # the catalogue changed
    box.server.app.documents.min_age = 0  # type: ignore[union-attr]
    changed = box.get("api/v1/status/org/big", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != first.headers["ETag"]


def test_a_write_through_the_api_shows_in_the_next_read(populated: WebBox) -> None:
    populated.serve(token=TOKEN)
    assert populated.get("api/v1/status").json()["repos"][1]["paused"] is False
    assert populated.post("pause", {"repo": "org/calm"}).status_code == 200
    # Within the second the document would otherwise be kept for, the pause shows.
    calm = next(repo for repo in populated.get("api/v1/status").json()["repos"] if repo["name"] == "org/calm")
    assert calm["paused"] is True


def test_bytes_avoided_are_counted_by_hop_and_reason(box: WebBox) -> None:
    route = ("download", "pan_upload", "vm_pull", "lfs_push")
    box.add_repo("org/a", {"one.bin": 1000}, route)
    box.finish("download", {"staged": "x", "reused": True})
    box.finish("pan_upload", {"file_id": "f", "rapid": True})
    box.finish("vm_pull", {"path": "p"})
    box.finish("lfs_push", {"oid": "o", "skipped": True})
    box.add_repo("org/b", {"two.bin": 500}, route)
    box.finish("download", {"reused": True, "reason": "reused drive copy of abc"})
    box.finish("pan_upload", {"file_id": "f", "rapid": False})
    box.finish("vm_pull", {"path": "p"})
    box.finish("lfs_push", {"oid": "o2", "skipped": False})
    box.serve()
    avoided = box.get("api/v1/avoided").json()
    assert avoided["avoided"] == [
        {"hop": "download", "reason": DRIVE_COPY_REUSED, "files": 1, "bytes": 500},
        {"hop": "download", "reason": STAGED_ALREADY, "files": 1, "bytes": 1000},
        {"hop": "lfs_push", "reason": SERVER_HAD_IT, "files": 1, "bytes": 1000},
        {"hop": "pan_upload", "reason": RAPID_UPLOAD, "files": 1, "bytes": 1000},
    ]
    assert avoided["total_bytes"] == 3500


def test_the_page_and_its_files_are_served_with_a_strict_policy(box: WebBox) -> None:
    box.serve()
    page = box.get("")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    for name, kind in (
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ):
        asset = box.get(name)
        assert asset.status_code == 200 and asset.headers["Content-Type"].startswith(kind), name
        assert f'"{name}"' in page.text
    # Nothing the page loads comes from anywhere else.
    assert "http://" not in page.text and "https://" not in page.text
    assert "://" not in box.get("app.js").text.replace("http://www.w3.org/2000/svg", "")


# -- who may read -------------------------------------------------------------------------------------


def test_on_loopback_reading_needs_no_token_but_only_for_a_loopback_host(populated: WebBox) -> None:
    populated.serve()
    assert populated.get("api/v1/status").status_code == 200
    assert populated.get("api/v1/status", headers={"Host": "localhost"}).status_code == 200
    # A page elsewhere that points its name at 127.0.0.1 (DNS rebinding) gets nothing.
    rebound = populated.get("api/v1/status", headers={"Host": "evil.example:8080"})
    assert rebound.status_code == 403
    assert "loopback" in rebound.json()["error"]
    # A proxy on this machine that says whom it forwards for is not this machine.
    proxied = populated.get("api/v1/status", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 403
    populated.serve(token=TOKEN)
    asked = populated.get("", headers={"Host": "relay.example.com"})
    assert asked.status_code == 401
    assert asked.headers["WWW-Authenticate"].startswith("Basic")  # the browser asks for the token
    assert populated.get("", headers={"Host": "relay.example.com"}, auth=("any", TOKEN)).status_code == 200


def test_read_without_token_off_asks_for_the_token_everywhere(populated: WebBox) -> None:
    populated.serve(token=TOKEN, read_without_token=False)
    assert populated.get("api/v1/status").status_code == 401
    assert populated.get("api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert populated.get("api/v1/status", auth=("relayd", TOKEN)).status_code == 200
    wrong = populated.get("api/v1/status", auth=("relayd", "not-the-token-at-all"))
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "wrong token"


# -- who may steer --------------------------------------------------------------------------------------


def test_control_without_a_configured_token_is_off(populated: WebBox) -> None:
    populated.serve()
    refused = populated.post("pause", {"repo": "org/calm"}, token=None)
    assert refused.status_code == 403
    assert "web.token_env" in refused.json()["error"]
    assert populated.store.repo("org/calm").paused is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("token", "headers", "status"),
    [
        (None, {}, 401),
        ("the-wrong-token-000000", {}, 401),
        (TOKEN, {"Origin": "http://evil.example"}, 403),
        (TOKEN, {"Origin": "null"}, 403),
        (TOKEN, {"Content-Type": "text/plain"}, 415),
        (TOKEN, {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ],
)
def test_control_needs_the_token_its_own_origin_and_json(
    populated: WebBox, token: str | None, headers: dict[str, str], status: int
) -> None:
    populated.serve(token=TOKEN)
    refused = populated.post("pause", {"repo": "org/calm"}, token=token, **headers)
    assert refused.status_code == status, refused.text
    assert populated.store.repo("org/calm").paused is False  # type: ignore[union-attr]


def test_control_from_its_own_origin_is_allowed(populated: WebBox) -> None:
    server = populated.serve(token=TOKEN)
    origin = f"http://127.0.0.1:{server.port}"
    assert populated.post("pause", {"repo": "org/calm"}, Origin=origin).status_code == 200
    assert populated.store.repo("org/calm").paused is True  # type: ignore[union-attr]


def test_no_cross_site_preflight_is_granted_and_verbs_need_post(populated: WebBox) -> None:
    populated.serve(token=TOKEN)
    preflight = populated.session.options(
        populated.url + "api/v1/pause",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 405
    assert not any(name.lower().startswith("access-control-") for name in preflight.headers)
    get_verb = populated.get("api/v1/pause")
    assert (get_verb.status_code, get_verb.headers["Allow"]) == (405, "POST")
    put = populated.session.put(populated.url + "api/v1/status", timeout=10)
    assert put.status_code == 405


def test_a_body_too_large_or_not_json_is_refused(populated: WebBox) -> None:
    populated.serve(token=TOKEN)
    big = populated.post("add", {"repo": "org/x", "include": ["a" * 70_000]})
    assert big.status_code == 413
    assert big.headers["Connection"] == "close", "the server closes it: the client must not reuse it"
    garbled = populated.session.post(
        populated.url + "api/v1/pause",
        data=b"{not json",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert garbled.status_code == 400
    assert "not JSON" in garbled.json()["error"]


# -- each verb ----------------------------------------------------------------------------------------


def test_each_verb_does_what_relayctl_does(populated: WebBox) -> None:
    populated.serve(token=TOKEN)
    added = populated.post(
        "add",
        {
            "repo": "https://huggingface.co/datasets/org/new/tree/v2",
            "route": "local_copy",
            "every": "1h",
            "include": ["*.json"],
            "webhooks": ["https://hooks.example/T000/s3cr3t-path"],
        },
    )
    assert added.status_code == 200, added.text
    answer = added.json()
    assert answer["lines"][0] == "added org/new:"
    assert answer["repo"]["type"] == "dataset" and answer["repo"]["revision"] == "v2"
    assert answer["repo"]["options"]["webhooks"] == ["https://hooks.example/…"]
    stored = populated.store.repo("org/new")
    assert stored is not None and stored.include == ["*.json"] and stored.every == 3600

    again = populated.post("add", {"repo": "org/new", "route": "local_copy"}).json()
    assert again["repo"]["outcome"] == "exists"

    assert populated.post("pause", {"repo": "org/new"}).json()["lines"] == ["paused org/new"]
    assert populated.store.repo("org/new").paused is True  # type: ignore[union-attr]
    assert populated.post("resume", {"repo": "org/new"}).json()["lines"] == ["resumed org/new"]
    assert populated.store.repo("org/new").paused is False  # type: ignore[union-attr]

    retried = populated.post("retry", {"repo": "org/stuck"}).json()
    assert retried["transfers"] == 1
    assert retried["lines"][0] == "made 1 transfer of org/stuck runnable"
    assert populated.post("retry", {"all": True, "hop": "local_copy"}).json()["transfers"] == 0

    assert populated.post("remove", {"repo": "org/new"}).json()["lines"] == ["removed org/new"]
    assert populated.store.repo("org/new") is None


@pytest.mark.parametrize(
    ("verb", "body", "status", "message"),
    [
        ("pause", {"repo": "org/none"}, 404, "no repo named 'org/none'"),
        ("remove", {"repo": "org/none"}, 404, "no repo named 'org/none'"),
        ("pause", {}, 400, "give the repo"),
        ("add", {"repo": "org/x", "route": "nope"}, 400, "not installed: nope"),
        ("add", {"repo": "org/x", "type": "space"}, 400, "invalid --type"),
        ("add", {"repo": "org/x", "every": "1s"}, 400, "at least 10s apart"),
        ("add", {"repo": "org/x", "colour": "red"}, 400, "unknown field(s) colour"),
        ("add", {"repo": "org/x", "include": "*.json"}, 400, "include must be a list of strings"),
        ("retry", {}, 400, "name a REPO or give --all"),
        ("retry", {"all": True, "hop": "nope"}, 400, "unknown hop 'nope'"),
    ],
)
def test_a_bad_request_says_what_is_wrong_and_writes_nothing(
    populated: WebBox, verb: str, body: dict[str, Any], status: int, message: str
) -> None:
    populated.serve(token=TOKEN)
    before = [repo.name for repo in populated.store.repos()]
    answer = populated.post(verb, body)
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert [repo.name for repo in populated.store.repos()] == before
