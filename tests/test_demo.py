"""`relayd demo` runs end to end at small sizes and verifies its own table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def run_demo(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "relayd", "demo", *args],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "everything verified" in output
    assert "✘" not in output
    return output


def test_the_full_route_demo_verifies_every_place_and_moves_only_the_changed_shard(tmp_path: Path) -> None:
    output = run_demo("--shards", "2", "--shard-size", "1MiB", "--workdir", str(tmp_path))
    # One table per revision, each listing every file of the revision with a ✔.
    tables = output.count("sha256 at every place")
    assert tables == 2
    assert len(re.findall(r"model-0000\d.*✔", output)) == 4
    # Not a terminal here: the tables are printed wide enough that no path is cut.
    assert len(re.findall(r"model-00001-of-00002\.safetensors .*✔", output)) == 2
    assert "generation_config.json" in output and "…" not in output
    assert "tokenizer.json changed" not in output
    assert "the new revision downloaded 1.0 MiB (one shard is 1.0 MiB)" in output
    # Every hop's bytes_moved, and the fake servers' own counts agree with it.
    moved = re.search(r"bytes moved, re-sends included: (.*); the servers counted the same", output)
    assert moved is not None, output
    assert [part.split(" ")[0] for part in moved.group(1).split(", ")] == [
        "download",
        "pan_upload",
        "vm_pull",
        "lfs_push",
    ]
    # A second repo with the same weights: ModelScope holds every shard, so no hop moves one.
    mirror = re.search(
        r"demo/tiny-model-mirror done in \d+s; moved \(small files only\): (.*); avoided: (.*)", output
    )
    assert mirror is not None, output
    for hop in ("download", "pan_upload", "vm_pull"):
        assert re.search(rf"{hop} 2\.\d MiB \(destination_had_it\)", mirror.group(2)), mirror.group(2)
    assert re.search(r"ms_upload 2\.\d MiB \(server_had_it\)", mirror.group(2)), mirror.group(2)
    assert "MiB" not in mirror.group(1)  # only the small files moved
    assert "SHARDS MOVED AGAIN" not in output


def test_the_demo_runs_on_the_open_platform_backend_after_a_qr_login(tmp_path: Path) -> None:
    output = run_demo(
        "--drive", "open", "--no-change", "--no-ssh", "--shards", "1", "--shard-size", "1MiB",
        "--workdir", str(tmp_path),
    )  # fmt: skip
    assert "Scan this QR code" in output and "/oauth/qrcode/" in output
    assert (tmp_path / "state" / "drive" / "open" / "token.json").exists()
    assert 'backend = "open"' in (tmp_path / "relayd.toml").read_text()


def test_the_local_demo_relays_through_local_copy(tmp_path: Path) -> None:
    output = run_demo("--local", "--shards", "2", "--shard-size", "1MiB", "--workdir", str(tmp_path))
    assert "second revision moved 1.0 MiB (one shard is 1.0 MiB)" in output


def test_without_the_sandbox_the_demo_says_the_exact_install_command(tmp_path: Path) -> None:
    """The sandbox is its own distribution: a relayd without it runs no demo, creates nothing, and names
    the command that installs it (from this checkout, into this Python)."""
    from relayd.demo_sandbox import sandbox_install_command

    checkout = Path(__file__).resolve().parent.parent
    # The demo's entry in a Python where importing the sandbox fails as if it were not installed.
    code = (
        "import sys\n"
        "sys.modules['relayd_sandbox'] = None\n"
        "from relayd.daemon import main\n"
        "sys.argv = ['relayd', 'demo', *sys.argv[1:]]\n"
        "main()\n"
    )
    for mode in ([], ["--local"]):
        workdir = tmp_path / ("local" if mode else "route")
        result = subprocess.run(
            [sys.executable, "-c", code, *mode, "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        command = f"{sys.executable} -m pip install -e {checkout / 'sandbox'}"
        assert command == sandbox_install_command()
        assert f"Install it with: {command}\n" in result.stderr
        assert "relayd_sandbox" not in result.stdout and "Traceback" not in result.stderr
        assert not workdir.exists()


def test_demo_help_lists_every_option_with_its_help() -> None:
    """`relayd demo --help` reaches the demo's own command (not the daemon's wrapper) and lists every
    option the demo parses, each with its help text."""
    import click

    from relayd.demo import demo_command

    result = subprocess.run(
        [sys.executable, "-m", "relayd", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    flat = " ".join(result.stdout.split())
    options = [param for param in demo_command.params if isinstance(param, click.Option)]
    assert len(options) >= 8
    for option in options:
        for name in (*option.opts, *option.secondary_opts):
            assert re.search(rf"(^|[\s,/]){re.escape(name)}\b", result.stdout, re.M), name
        assert option.help, option.name
        assert " ".join(option.help.split()) in flat, option.name
    bad = subprocess.run(
        [sys.executable, "-m", "relayd", "demo", "--shard-size", "lots"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "Invalid value for '--shard-size': not a size: 'lots'" in bad.stderr


def test_the_two_site_demo_survives_a_kill_9_of_the_vm_daemon(tmp_path: Path) -> None:
    """`relayd demo --sites 2`: one daemon per site on a throwaway PostgreSQL catalogue, the vm daemon
    killed with SIGKILL while it pulls and started again, and the same verification as one daemon."""
    output = run_demo("--sites", "2", "--shards", "2", "--shard-size", "1MiB", "--workdir", str(tmp_path))
    assert "sites: abroad serves download + pan_upload, vm serves vm_pull + lfs_push + ms_upload" in output
    killed = re.search(r"killed the vm daemon \(pid (\d+)\) with SIGKILL while vm_pull was running", output)
    assert killed is not None, output
    assert output.count("sha256 at every place") == 2
    assert len(re.findall(r"model-0000\d.*✔", output)) == 4
    assert "the new revision downloaded 1.0 MiB (one shard is 1.0 MiB)" in output
    workers = output.split("relayctl workers:\n", 1)[1].split("\n")[:3]
    states = sorted((line.split()[0], line.split()[1]) for line in workers)
    assert states == [("abroad", "running"), ("vm", "dead"), ("vm", "running")], workers
    assert any(f"pid {killed.group(1)} " in line and " dead " in line for line in workers)
    # Only the site serving the route's first hop polls the Hub.
    assert "polling every" in (tmp_path / "abroad.log").read_text()
    assert "polling every" not in (tmp_path / "vm.log").read_text()
