"""relayctl doctor against the route sandbox: everything up passes; then one thing broken at a time (the
HF token, a gated repo, the drive login, git-lfs on the VM, the ModelScope token, the staging floor, a
host that never answers) fails that check with its fix in plain words, skips what needs it, and never
shows a secret."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import relayd.hub_limits
from relayd.catalogue import migrate
from relayd.catalogue.store import RepoSpec, Store
from relayd.cli import cli
from relayd_sandbox.route import HUB_USER, REPO, RouteSandbox
from relayd_sandbox.sshd import restricted_path
from relayd_sandbox.systools import require
from tests.support.doctables import documented_tables

DOC = Path(__file__).resolve().parents[2] / "docs" / "doctor-json.md"
SHAPES = ("Doctor document", "Check")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouteSandbox]:
    """The sandbox (VM over SSH when an sshd is installed), started once for this module."""
    sandbox = RouteSandbox(tmp_path_factory.mktemp("doctor") / "route", shards=1, shard_size=64 * 1024)
    with sandbox:
        yield sandbox


class Doctor:
    """Runs `relayctl doctor --json` in this process against the sandbox's config."""

    def __init__(self, box: RouteSandbox) -> None:
        self.box = box
        self.secrets = [box.hub_token, box.ms_token, (box.root / "drive-refresh-token").read_text().strip()]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(
            cli, ["-c", str(self.box.config_path), "doctor", *args], catch_exceptions=False
        )

    def json(self, *args: str, code: int | None = None) -> dict[str, Any]:
        result = self.run("--json", "--timeout", "20", *args)
        for secret in self.secrets:
            assert secret not in result.output
        if code is not None:
            assert result.exit_code == code, result.output
        document: dict[str, Any] = json.loads(result.stdout)
        assert document["ok"] is (result.exit_code == 0)
        return document

    def edit(self, old: str, new: str) -> None:
        text = self.box.config_path.read_text()
        assert old in text, old
        self.box.config_path.write_text(text.replace(old, new, 1))


@pytest.fixture
def doctor(box: RouteSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Doctor]:
    """A fresh sandbox config and its tokens in the environment; the repo added."""
    box.write_config()
    for key, value in box.env().items():
        if key.startswith("RELAYD_DEMO_"):
            monkeypatch.setenv(key, value)
    store = Store(f"sqlite:///{box.root / 'state' / 'catalogue.db'}")
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    if store.repo(REPO) is None:
        store.add_repo(
            RepoSpec(name=REPO, every=3600, route=("download", "pan_upload", "vm_pull", "lfs_push"))
        )
    store.close()
    yield Doctor(box)


def check(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [item for item in document["checks"] if item["name"] == name]
    assert len(found) == 1, (name, [item["name"] for item in document["checks"]])
    return found[0]


def failed(document: dict[str, Any]) -> set[str]:
    return {item["name"] for item in document["checks"] if item["status"] == "fail"}


# -- the documented shape ------------------------------------------------------------------------------


def assert_documented(document: dict[str, Any]) -> None:
    """The document has exactly the documented fields, of the documented types (two levels deep)."""
    tables = documented_tables(DOC, SHAPES)
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}

    def same(value: Any, declared: str) -> bool:
        allowed = {part.strip() for part in declared.split(" or ")}
        kind = "null" if value is None else kinds[type(value)]
        return kind in allowed or (kind == "integer" and "number" in allowed) or kind in tables

    top = {field for field in tables["Doctor document"] if "." not in field and "[]" not in field}
    assert set(document) == top
    for field, declared in tables["Doctor document"].items():
        if "." in field or "[]" in field:
            continue
        assert same(document[field], declared), field
    assert set(document["counts"]) == {"ok", "warn", "fail", "skip"}
    for item in document["checks"]:
        assert set(item) == set(tables["Check"])
        for field, declared in tables["Check"].items():
            assert same(item[field], declared), (field, item)
        assert item["status"] in ("ok", "warn", "fail", "skip")


# -- tests ---------------------------------------------------------------------------------------------


def test_everything_up_passes(doctor: Doctor) -> None:
    document = doctor.json(code=0)
    assert_documented(document)
    assert document["hops"] == ["download", "pan_upload", "vm_pull", "lfs_push"]
    assert document["repos"] == [REPO]
    statuses = {item["name"]: item["status"] for item in document["checks"]}
    assert statuses.pop("daemon") == "warn"  # no daemon runs here: a warning, not a failure
    assert set(statuses.values()) == {"ok"}, statuses
    for name in (
        "config",
        "catalogue",
        "hub endpoint",
        "hub token",
        f"hub {REPO}",
        "drive login",
        "drive api",
        "vm",
        "vm python3",
        "vm git",
        "vm git-lfs",
        "vm disk",
        "modelscope token",
        f"modelscope {REPO}",
        "staging disk",
    ):
        assert name in statuses
    assert check(document, "hub token")["detail"].startswith(f"valid for {HUB_USER} on ")
    assert "accepts the token" in check(document, f"modelscope {REPO}")["detail"]

    text = doctor.run()
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"relayctl doctor: {doctor.box.config_path} (hops: download, pan_upload")
    assert any(line.startswith("WARN    daemon") for line in lines)
    assert any(line.lstrip().startswith("hint: start it") for line in lines)
    assert lines[-1].endswith("1 warning(s), 0 failed")

    # A daemon's heartbeat turns the warning into a pass.
    store = Store(f"sqlite:///{doctor.box.root / 'state' / 'catalogue.db'}")
    store.publish("daemon", {"pid": 4242, "version": "test", "state": "running", "running": 0})
    store.close()
    assert check(doctor.json(code=0), "daemon")["status"] == "ok"


def test_the_hubs_rate_limits_left_are_shown(doctor: Doctor, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = doctor.box.hub
    assert hub is not None
    # What this test teaches relayd of the budget (nearly used up) stays with this test.
    monkeypatch.setattr(relayd.hub_limits, "_BUDGETS", {})
    row = check(doctor.json(code=0), "hub rate limit")
    assert row["status"] == "ok"
    assert re.fullmatch(r"api \d+/1000, resolvers \d+/5000 left in this 5-minute window", row["detail"])

    hub.rate_limits.clear()
    hub.rate_limits.quotas["free"]["api"] = 3  # doctor's own whoami and auth_check leave one
    try:
        row = check(doctor.json(code=0), "hub rate limit")
    finally:
        hub.rate_limits.quotas["free"]["api"] = 1000
    assert row["status"] == "warn"
    assert re.fullmatch(
        r"api 1/3, resolvers \d+/5000 left in this 5-minute window \(api resets in 4m\d\ds\)", row["detail"]
    )
    assert row["hint"].startswith("relayd waits for the window to reset")


def test_a_revoked_hub_token_fails_with_a_hint(doctor: Doctor) -> None:
    hub = doctor.box.hub
    assert hub is not None
    hub.revoke_token(doctor.box.hub_token)
    try:
        document = doctor.json(code=1)
    finally:
        hub.add_token(doctor.box.hub_token, HUB_USER)
    token = check(document, "hub token")
    assert token["status"] == "fail"
    assert "refused the token" in token["detail"]
    assert token["hint"].startswith("set a valid token (hub.token_env")
    # The repo's check needs the token: skipped, saying why, rather than failing a second time.
    assert failed(document) == {"hub token"}
    access = check(document, f"hub {REPO}")
    assert (access["status"], access["detail"]) == ("skip", "skipped: the Hub token check failed")


def test_a_gated_repo_without_approval_points_at_the_licence(doctor: Doctor) -> None:
    hub = doctor.box.hub
    assert hub is not None
    gated = "other/gated-model"
    hub.create_repo(gated, gated="manual", files={"config.json": "{}\n"})
    store = Store(f"sqlite:///{doctor.box.root / 'state' / 'catalogue.db'}")
    store.add_repo(RepoSpec(name=gated, every=3600, route=("download",)))
    try:
        document = doctor.json(code=1)
        access = check(document, f"hub {gated}")
        assert access["status"] == "fail"
        assert "is gated" in access["detail"]
        assert access["hint"].startswith(f"accept the licence at {hub.endpoint}/{gated}, then set the token")
        assert failed(document) == {f"hub {gated}"}
        hub.approve(gated, doctor.box.hub_token)
        approved = doctor.json(code=0)
        assert check(approved, f"hub {gated}")["detail"].startswith("readable; main is at ")
    finally:
        store.remove_repo(gated)
        store.close()


def test_a_missing_drive_login_names_relayctl_drive_login(doctor: Doctor) -> None:
    token_file = doctor.box.root / "drive-refresh-token"
    doctor.edit(f'refresh_token_file = "{token_file}"\n', "")
    document = doctor.json(code=1)
    login = check(document, "drive login")
    assert login["status"] == "fail"
    assert "no Aliyun Drive login" in login["detail"]
    assert "relayctl drive login --refresh-token-file PATH" in login["hint"]
    assert failed(document) == {"drive login"}


def test_a_vm_without_git_lfs_asks_to_install_it(doctor: Doctor, tmp_path: Path) -> None:
    vm_path = restricted_path(tmp_path / "bin", hide=["git-lfs"])
    doctor.edit("[vm]\n", f'[vm]\npath = "{vm_path}"\n')
    document = doctor.json(code=1)
    lfs = check(document, "vm git-lfs")
    assert lfs["status"] == "fail"
    assert "git-lfs is not installed" in lfs["detail"]
    assert "install git-lfs" in lfs["hint"]
    assert check(document, "vm git")["status"] == "ok"
    # The destination check runs git-lfs on the VM: skipped with the reason.
    destination = check(document, f"modelscope {REPO}")
    assert (destination["status"], destination["detail"]) == ("skip", "skipped: git-lfs on the VM failed")
    assert failed(document) == {"vm git-lfs"}


def test_a_wrong_modelscope_token_fails_the_destination(
    doctor: Doctor, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "ms-wrong-token-0123456789"
    monkeypatch.setenv("RELAYD_DEMO_MS_TOKEN", wrong)
    result = doctor.run("--json")
    assert result.exit_code == 1
    assert wrong not in result.output
    document = json.loads(result.stdout)
    destination = check(document, f"modelscope {REPO}")
    assert destination["status"] == "fail"
    assert "401" in destination["detail"]
    assert destination["hint"].startswith(f"ModelScope refused the access token for {REPO}")
    assert failed(document) == {f"modelscope {REPO}"}

    monkeypatch.delenv("RELAYD_DEMO_MS_TOKEN")
    unset = doctor.json(code=1)
    assert check(unset, "modelscope token")["hint"].startswith("set MODELSCOPE_TOKEN")
    assert failed(unset) == {"modelscope token"}
    assert check(unset, f"modelscope {REPO}")["detail"] == "skipped: the ModelScope token failed"


def test_a_staging_floor_above_the_free_space_fails_the_disk_check(doctor: Doctor) -> None:
    doctor.edit('min_free = "0"', 'min_free = "1000 TB"')
    document = doctor.json(code=1)
    disk = check(document, "staging disk")
    assert disk["status"] == "fail"
    assert "floor" in disk["detail"]
    assert "staging.min_free" in disk["hint"]
    assert failed(document) == {"staging disk"}


def test_an_invalid_config_exits_2_with_the_key(doctor: Doctor) -> None:
    doctor.edit("[staging]\n", '[staging]\nmax_bytes_typo = "1 GB"\n')
    result = doctor.run("--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert [item["name"] for item in document["checks"]] == ["config"]
    assert "max_bytes_typo" in document["checks"][0]["detail"]
    assert document["ok"] is False


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


def test_a_host_that_never_answers_cannot_hang_doctor(doctor: Doctor, silent_port: int) -> None:
    doctor.edit('endpoint = "', f'endpoint = "http://127.0.0.1:{silent_port}"\n# was: endpoint = "')
    started = time.monotonic()
    result = doctor.run("--json", "--timeout", "1")
    assert time.monotonic() - started < 15
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    endpoint = check(document, "hub endpoint")
    assert endpoint["status"] == "fail"
    assert endpoint["detail"] == f"timed out after 1 s waiting for http://127.0.0.1:{silent_port}"
    assert "give doctor a longer --timeout" in endpoint["hint"]
    assert failed(document) - {"vm"} == {"hub endpoint"}  # the VM may run out of 1 s too
    for name in ("hub token", f"hub {REPO}"):
        assert check(document, name)["detail"] == "skipped: the Hub endpoint failed"


def test_without_repos_the_default_route_is_checked(doctor: Doctor) -> None:
    store = Store(f"sqlite:///{doctor.box.root / 'state' / 'catalogue.db'}")
    store.remove_repo(REPO)
    try:
        document = doctor.json(code=0)
    finally:
        store.add_repo(
            RepoSpec(name=REPO, every=3600, route=("download", "pan_upload", "vm_pull", "lfs_push"))
        )
        store.close()
    assert document["repos"] == []
    assert document["hops"] == ["download", "pan_upload", "vm_pull", "lfs_push"]
    assert check(document, "catalogue")["detail"].endswith("; 0 repos")
    # The services are reached all the same: the Hub and ModelScope without a repo to ask about.
    assert check(document, "hub endpoint")["detail"] == f"{doctor.box.hub.endpoint} answers"
    assert check(document, "modelscope endpoint")["status"] == "ok"
    assert check(document, "drive api")["status"] == "ok"
    assert not [
        item for item in document["checks"] if item["name"].startswith("hub ") and "/" in item["name"]
    ]
    assert check(document, "vm git-lfs")["status"] == "ok"


# -- services that cannot be reached, in plain words ---------------------------------------------------


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Answers every request 503, as a server down for maintenance does."""

    def _answer(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(server: http.server.HTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def self_signed_tls(tmp_path: Path) -> Iterator[int]:
    """A loopback HTTPS server whose certificate is self-signed (made with the openssl CLI)."""
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    require(openssl, "openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server) as port:
        yield port


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


@pytest.mark.parametrize("case", ["refused", "dns", "tls", "timeout", "unavailable"])
def test_unreachable_services_are_told_in_plain_words_even_without_repos(
    doctor: Doctor, tmp_path: Path, silent_port: int, case: str
) -> None:
    """No repo is watched, yet the Hub and the drive are reached; each way of failing reads as a person
    would say it, with what to do, and the checks that need the Hub are skipped with the reason."""
    with contextlib.ExitStack() as stack:
        timeout = "5"
        if case == "refused":
            url = f"http://127.0.0.1:{closed_port()}"
            expected = f"connection refused at {url}"
            hint = "nothing accepts connections on 127.0.0.1 port"
        elif case == "dns":
            url = "http://relayd-doctor-test.invalid:8080"
            expected = "DNS name not found: relayd-doctor-test.invalid"
            hint = "check the host name in {setting}"
        elif case == "tls":
            url = f"https://127.0.0.1:{stack.enter_context(self_signed_tls(tmp_path))}"
            expected = f"certificate not trusted (self-signed certificate) at {url}"
            hint = "add its CA to the system's trust store"
        elif case == "timeout":
            url, timeout = f"http://127.0.0.1:{silent_port}", "1"
            expected = f"timed out after 1 s waiting for {url}"
            hint = "give doctor a longer --timeout"
        else:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
            url = f"http://127.0.0.1:{stack.enter_context(serving(server))}"
            expected = "{at} answered HTTP 503 Service Unavailable: the server is down or overloaded"
            hint = "check {setting}"
        doctor.edit('endpoint = "', f'endpoint = "{url}"\n# was: endpoint = "')
        doctor.edit('api_url = "', f'api_url = "{url}/adrive"\n# was: api_url = "')
        store = Store(f"sqlite:///{doctor.box.root / 'state' / 'catalogue.db'}")
        store.remove_repo(REPO)
        try:
            result = doctor.run("--json", "--timeout", timeout)
            text = doctor.run("--timeout", timeout)
        finally:
            store.add_repo(
                RepoSpec(name=REPO, every=3600, route=("download", "pan_upload", "vm_pull", "lfs_push"))
            )
            store.close()
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["repos"] == []
    # With a 1 s deadline the VM (an ssh login and the agent's start) may run out of time as well.
    spare = {"vm"} if case == "timeout" else set()
    assert failed(document) - spare == {"hub endpoint", "drive api"}
    for name, setting, at in (
        ("hub endpoint", "hub.endpoint", url),
        ("drive api", "drive.api_url", f"{url}/adrive"),
    ):
        row = check(document, name)
        assert row["detail"] == expected.format(at=at)
        assert hint.format(setting=setting) in row["hint"]
    assert check(document, "hub token") == {
        **check(document, "hub token"),
        "status": "skip",
        "detail": "skipped: the Hub endpoint failed",
    }
    for output in (result.stdout, text.stdout):
        assert "Errno" not in output and "urlopen" not in output and "Error" not in output
    lines = text.stdout.splitlines()
    at = next(
        i
        for i, line in enumerate(lines)
        if re.fullmatch(rf"FAIL +hub endpoint +{re.escape(expected.format(at=url))}", line)
    )
    assert lines[at + 1].strip().startswith("hint: ")


def test_an_unreachable_vm_skips_what_runs_there(doctor: Doctor) -> None:
    """The tools, the disk and the destination (pushed from the VM) are not checked on a VM that cannot be
    reached: each is skipped, saying so, and only the VM itself fails."""
    if not doctor.box.use_ssh:
        doctor.edit("[vm]\n", '[vm]\npython = "/nonexistent/python3"\n')
    else:
        doctor.edit(f"port = {doctor.box.sshd.port}\n", f"port = {closed_port()}\n")
    document = doctor.json("--timeout", "5", code=1)
    assert failed(document) == {"vm"}
    for name in ("vm python3", "vm git", "vm git-lfs", "vm disk", f"modelscope {REPO}"):
        assert check(document, name)["status"] == "skip", name
        assert check(document, name)["detail"] == "skipped: the VM failed", name


def test_a_route_that_pushes_from_staging_checks_git_on_this_machine(doctor: Doctor) -> None:
    """Without vm_pull, lfs_push pushes the staged copies from this machine: doctor checks git and git-lfs
    here and the destination through a local agent, and neither the VM nor the drive."""
    store = Store(f"sqlite:///{doctor.box.root / 'state' / 'catalogue.db'}")
    store.add_repo(RepoSpec(name=REPO, every=3600, route=("download", "lfs_push")), replace=True)
    try:
        document = doctor.json(code=0)
    finally:
        store.add_repo(
            RepoSpec(name=REPO, every=3600, route=("download", "pan_upload", "vm_pull", "lfs_push")),
            replace=True,
        )
        store.close()
    assert document["hops"] == ["download", "lfs_push"]
    for name in ("local git", "local git-lfs"):
        assert check(document, name)["status"] == "ok", name
    assert "accepts the token" in check(document, f"modelscope {REPO}")["detail"]
    assert not {item["group"] for item in document["checks"]} & {"vm", "drive"}


def test_a_sites_daemon_is_checked_for_the_hops_it_serves(doctor: Doctor) -> None:
    """On the VM site (docs/sites.md) doctor checks vm_pull and lfs_push, not the Hub it cannot reach."""
    doctor.edit("[daemon]\n", '[daemon]\nsite = "vm"\nhops = ["vm_pull", "lfs_push"]\n')
    try:
        document = doctor.json(code=0)
    finally:
        doctor.edit('[daemon]\nsite = "vm"\nhops = ["vm_pull", "lfs_push"]\n', "[daemon]\n")
    assert document["hops"] == ["vm_pull", "lfs_push"]
    names = [item["name"] for item in document["checks"]]
    assert not [name for name in names if name.startswith("hub ")], names
    assert check(document, "vm git-lfs")["status"] == "ok"
    assert check(document, "drive api")["status"] == "ok"


def test_the_daemons_are_reported_from_their_heartbeats(doctor: Doctor) -> None:
    """Two sites (docs/sites.md): the abroad daemon runs, the vm one is dead, so its hops are unserved."""
    from sqlalchemy import delete, update

    from relayd.catalogue.schema import Worker
    from relayd.catalogue.store import WorkerBeat, utcnow

    store = Store(f"sqlite:///{doctor.box.root / 'state' / 'catalogue.db'}")
    store.beat(
        WorkerBeat("abroad-1", "abroad", "abroad-host", 11, ("download", "pan_upload"), "9.9", utcnow())
    )
    store.beat(WorkerBeat("vm-1", "vm", "vm-host", 22, ("vm_pull", "lfs_push"), "9.9", utcnow()))
    try:
        with store._write() as session:
            session.execute(
                update(Worker).where(Worker.id == "vm-1").values(last_seen=utcnow() - timedelta(minutes=5))
            )
        document = doctor.json(code=0)
        assert_documented(document)
        rows = {item["name"]: item for item in document["checks"] if item["group"] == "daemon"}
        assert {name: row["status"] for name, row in rows.items()} == {
            "daemon": "ok",
            "daemon vm on vm-host": "warn",
            "daemon for vm_pull": "warn",
            "daemon for lfs_push": "warn",
        }
        assert rows["daemon"]["detail"] == "1 running (abroad on abroad-host), 0 transfer(s) leased"
        assert rows["daemon vm on vm-host"]["hint"].startswith("start relayd again on vm-host (site vm)")
        assert rows["daemon for vm_pull"]["detail"] == "no daemon serves vm_pull"
        text = doctor.run().stdout
        assert "WARN    daemon for lfs_push" in text
        assert 'hint: start one with daemon.hops = ["lfs_push"] (docs/sites.md)' in text
    finally:
        with store._write() as session:
            session.execute(delete(Worker))
        store.close()


def test_an_ms_upload_route_checks_the_http_api_and_no_git(
    doctor: Doctor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ms_upload needs no git anywhere: doctor asks ModelScope's HTTP API (an empty pre-check) from
    where the route uploads, and says when the token is refused."""
    store = Store(f"sqlite:///{doctor.box.root / 'state' / 'catalogue.db'}")
    store.add_repo(RepoSpec(name=REPO, every=3600, route=("download", "ms_upload")), replace=True)
    try:
        document = doctor.json(code=0)
        assert document["hops"] == ["download", "ms_upload"]
        assert "accepts the token" in check(document, f"modelscope {REPO}")["detail"]
        assert not {item["name"] for item in document["checks"]} & {"local git", "local git-lfs"}
        monkeypatch.setenv("RELAYD_DEMO_MS_TOKEN", "ms-wrong-token-0123456789")
        refused = doctor.json(code=1)
        assert check(refused, f"modelscope {REPO}")["status"] == "fail"
        assert failed(refused) == {f"modelscope {REPO}"}
    finally:
        store.add_repo(
            RepoSpec(name=REPO, every=3600, route=("download", "pan_upload", "vm_pull", "lfs_push")),
            replace=True,
        )
        store.close()
