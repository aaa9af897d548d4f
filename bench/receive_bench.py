#!/usr/bin/env python3
"""Compare ways of receiving one file over TLS into a file, by CPU seconds per GiB (issue 19, item 2).

The fake Hub's CDN origin serves one generated file over HTTPS (the sandbox's throwaway CA) from this
process; each receiver runs in a child process of its own, fetching the file's signed CDN URL as
consecutive 8 MiB ranges over N keep-alive connections and writing each chunk at its offset with
pwrite, and reports the user + sys seconds of its process (``resource.getrusage``) from the first
connection to the last byte, and its throughput. No hashing, no fsync: only the receive loop differs.

    .venv/bin/python bench/receive_bench.py                        # 1 GiB, 16 and 4 connections, 3 rounds
    .venv/bin/python bench/receive_bench.py --size 2GiB --rounds 5
    .venv/bin/pip install pycurl   # first, for the pycurl receivers (not a dependency of relayd)

Receivers:
  http.client      the hop's path: relayd.http_ranges.RangeClient, http.client
                   over an ssl.SSLSocket, ``readinto`` of 256 KiB (three Python frames and two system
                   calls per 16 KiB TLS record), one thread each
  http.client+bio  the same RangeClient whose connections run TLS in memory (MemoryTLSSocket below:
                   http.client over an ssl.SSLObject fed by 256 KiB socket reads), one thread each
  memorybio        ssl.SSLObject over two ssl.MemoryBIOs: one raw ``socket.recv_into`` of up to 256 KiB
                   fed to the BIO, then ``SSLObject.read(n, buffer)`` until 256 KiB are decrypted, one
                   thread each
  pycurl           libcurl's multi interface in one thread, CURLOPT_BUFFERSIZE 512 KiB, a Python
                   WRITEFUNCTION that pwrites each block at its offset
  pycurl-easy      one thread per connection, each with its own easy handle (``perform`` per range)
                   and the same WRITEFUNCTION: the download hop's shape
  pycurl-file      the multi interface with WRITEDATA: a buffered file object (256 KiB) per connection,
                   seeked to each range's start (libcurl calls its C ``write``; no Python frame per block)

Rounds interleave the receivers so that a machine whose load changes treats them alike.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import io
import json
import os
import queue
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = 8 * MiB  # one ranged request
BUFFER = 256 * 1024  # the hop's receive buffer (relayd.hops.download_fetch.RECEIVE_BUFFER)
RECEIVERS = ("http.client", "memorybio", "http.client+bio", "pycurl", "pycurl-file", "pycurl-easy")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ranges(size: int) -> queue.SimpleQueue[tuple[int, int]]:
    work: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for start in range(0, size, CHUNK):
        work.put((start, min(size, start + CHUNK)))
    return work


def next_range(work: queue.SimpleQueue[tuple[int, int]]) -> tuple[int, int] | None:
    try:
        return work.get_nowait()
    except queue.Empty:
        return None


def run_threads(target: Any, connections: int) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# -- (a) today's path, and the same with its TLS in memory ----------------------------------------------


class MemoryTLSSocket:
    """The part of a TLS socket ``http.client`` uses (``sendall``, ``makefile``, ``settimeout``,
    ``close``), over a connected plain socket: TLS in an ssl.SSLObject over memory BIOs, fed by one
    ``recv_into`` of up to BUFFER bytes at a time instead of one read per 16 KiB record."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._raw = memoryview(bytearray(BUFFER))
        self._retry(self._tls.do_handshake)

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> bool:
        """Feed the BIO what the socket holds (waiting for at least a byte); False at end of stream."""
        got = self.sock.recv_into(self._raw)
        if not got:
            self._incoming.write_eof()
            return False
        self._incoming.write(self._raw[:got])
        return True

    def _retry(self, step: Any) -> Any:
        """Run a TLS step, sending what it wrote and feeding it the socket until it completes."""
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError("the server closed the connection during TLS") from None
                continue
            self._flush()
            return result

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            written: int = self._retry(functools.partial(self._tls.write, view))
            view = view[written:]

    def readinto(self, buffer: memoryview) -> int:
        """Decrypt into *buffer* what has arrived, waiting on the socket only while nothing has; 0 at
        the end of the stream (a close_notify, or the connection closed)."""
        view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        filled, want = 0, len(view)
        read: Any = self._tls.read  # given a buffer, it returns a count (typeshed says bytes)
        while filled < want:
            try:
                got: int = read(want - filled, view[filled:])
            except ssl.SSLWantReadError:
                if filled or not self._fill():
                    break
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not got:
                break
            filled += got
        return filled

    def makefile(self, mode: str = "rb", buffering: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader:
        if "w" in mode:
            raise ValueError("a MemoryTLSSocket is only read through its file")
        return io.BufferedReader(_Reader(self), buffering)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()


class _Reader(io.RawIOBase):
    def __init__(self, tls: MemoryTLSSocket) -> None:
        self._tls = tls

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._tls.readinto(memoryview(buffer).cast("B"))


class MemoryTLSConnection(http.client.HTTPSConnection):
    """A direct ``HTTPSConnection`` whose TLS is a MemoryTLSSocket."""

    def __init__(
        self, host: str, port: int | None = None, *, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.tls_context = context
        self.tls_host = host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = MemoryTLSSocket(self.sock, self.tls_context, self.tls_host)


def memory_tls_client(**options: Any) -> Any:
    """Return a RangeClient whose https connections are MemoryTLSConnections (direct ones only: the
    bench uses no proxy)."""
    from relayd.http_ranges import RangeClient

    class MemoryTLSRangeClient(RangeClient):
        def _connection(self, origin: Any) -> http.client.HTTPConnection:
            connection = self._connections.get(origin)
            if connection is None:
                assert self._ssl_context is not None
                connection = MemoryTLSConnection(
                    origin[1], origin[2], timeout=self.connect_timeout, context=self._ssl_context
                )
                self._connections[origin] = connection
                self._fresh.add(origin)
            return connection

    return MemoryTLSRangeClient(**options)


def receive_http_client(url: str, size: int, fd: int, connections: int, ca: str, *, memory_tls: bool) -> None:
    from relayd.http_ranges import RangeClient
    from relayd.vm.agent.proxy import client_context

    work = ranges(size)
    context = client_context(ca)
    make = memory_tls_client if memory_tls else RangeClient

    def write(offset: int, data: memoryview) -> None:
        os.pwrite(fd, data, offset)

    def worker() -> None:
        client = make(connect_timeout=30, stall_timeout=30, buffer_size=BUFFER, ssl_context=context)
        try:
            while (taken := next_range(work)) is not None:
                client.fetch(url, taken[0], taken[1], size, write)
        finally:
            client.close()

    run_threads(worker, connections)


# -- (b) SSLObject over MemoryBIO ----------------------------------------------------------------------


class BioConnection:
    """One keep-alive HTTPS connection whose TLS runs in an ssl.SSLObject over memory BIOs."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host)
        self.raw = memoryview(bytearray(BUFFER))
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()
        self.flush()

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def fill(self) -> None:
        got = self.sock.recv_into(self.raw)
        if not got:
            raise ConnectionError("the server closed the connection")
        self.incoming.write(self.raw[:got])

    def read_into(self, view: memoryview) -> int:
        """Decrypt into *view* until it is full, reading the socket whenever the BIO runs dry."""
        filled, want = 0, len(view)
        read, fill = self.tls.read, self.fill
        while filled < want:
            try:
                filled += read(want - filled, view[filled:])
            except ssl.SSLWantReadError:
                fill()
        return filled

    def head(self, request: bytes) -> tuple[bytes, bytes]:
        """Send *request*; return the header block and the body bytes decrypted with it."""
        self.tls.write(request)
        self.flush()
        received = bytearray()
        while b"\r\n\r\n" not in received:
            try:
                received += self.tls.read(BUFFER)
            except ssl.SSLWantReadError:
                self.fill()
        header, _, rest = bytes(received).partition(b"\r\n\r\n")
        return header, rest


def receive_memorybio(url: str, size: int, fd: int, connections: int, ca: str) -> None:
    from urllib.parse import urlsplit

    from relayd.vm.agent.proxy import client_context

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    target = f"{parts.path}?{parts.query}"
    work = ranges(size)
    context = client_context(ca)

    def worker() -> None:
        connection = BioConnection(host, port, context)
        buffer = memoryview(bytearray(BUFFER))
        try:
            while (taken := next_range(work)) is not None:
                start, end = taken
                request = (
                    f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nRange: bytes={start}-{end - 1}\r\n"
                    "Accept-Encoding: identity\r\nUser-Agent: relayd\r\n\r\n"
                ).encode()
                header, rest = connection.head(request)
                lines = header.decode("latin-1").split("\r\n")
                fields = dict(line.partition(":")[::2] for line in lines[1:])
                got = {name.strip().lower(): value.strip() for name, value in fields.items()}
                expected = f"bytes {start}-{end - 1}/{size}"
                if lines[0].split()[1] != "206" or got.get("content-range") != expected:
                    raise RuntimeError(f"not the range asked for: {lines[0]!r} {got.get('content-range')!r}")
                position = start
                if rest:
                    os.pwrite(fd, rest, position)
                    position += len(rest)
                while position < end:
                    got = connection.read_into(buffer[: min(BUFFER, end - position)])
                    os.pwrite(fd, buffer[:got], position)
                    position += got
        finally:
            connection.sock.close()

    run_threads(worker, connections)


# -- (c) pycurl, multi interface -----------------------------------------------------------------------


class CurlReceiver:
    """libcurl's multi interface over N easy handles in this thread, each taking the next range as it
    finishes one (its connection kept alive), with the same strict check of the 206 and Content-Range."""

    def __init__(self, url: str, size: int, fd: int, ca: str, *, file_object: bool) -> None:
        import pycurl

        self.pycurl = pycurl
        self.url, self.size, self.fd, self.ca = url, size, fd, ca
        self.file_object = file_object
        self.work = ranges(size)
        self.multi = pycurl.CurlMulti()
        self.state: dict[Any, dict[str, Any]] = {}

    def handle(self) -> Any:
        pycurl = self.pycurl
        handle = pycurl.Curl()
        entry: dict[str, Any] = {}
        self.state[handle] = entry
        handle.setopt(pycurl.URL, self.url)
        handle.setopt(pycurl.CAINFO, self.ca)
        handle.setopt(pycurl.BUFFERSIZE, 512 * 1024)
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)

        def header(line: bytes) -> None:
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-range":
                entry["content_range"] = value.strip()

        def write(data: bytes) -> None:
            os.pwrite(self.fd, data, entry["position"])
            entry["position"] += len(data)

        handle.setopt(pycurl.HEADERFUNCTION, header)
        if self.file_object:
            # An open file of its own (a dup would share one file offset among the handles).
            entry["file"] = open(f"/proc/self/fd/{self.fd}", "r+b", buffering=BUFFER)  # noqa: SIM115
            handle.setopt(pycurl.WRITEDATA, entry["file"])
        else:
            handle.setopt(pycurl.WRITEFUNCTION, write)
        return handle

    def start(self, handle: Any) -> bool:
        """Give *handle* the next range; False when none is left."""
        taken = next_range(self.work)
        if taken is None:
            return False
        begin, end = taken
        entry = self.state[handle]
        entry.update(start=begin, end=end, position=begin, content_range=None)
        handle.setopt(self.pycurl.RANGE, f"{begin}-{end - 1}")
        if self.file_object:
            entry["file"].seek(begin)
        self.multi.add_handle(handle)
        return True

    def finished(self, handle: Any) -> bool:
        """Check a finished range, and start the next; False when the handle has nothing left."""
        entry = self.state[handle]
        expected = f"bytes {entry['start']}-{entry['end'] - 1}/{self.size}"
        if handle.getinfo(self.pycurl.RESPONSE_CODE) != 206 or entry["content_range"] != expected:
            raise RuntimeError(f"not the range asked for: {entry['content_range']!r}")
        self.multi.remove_handle(handle)
        if self.file_object:
            entry["file"].flush()
        return self.start(handle)

    def run(self, connections: int) -> None:
        handles = [self.handle() for _ in range(connections)]
        active = sum(1 for handle in handles if self.start(handle))
        while active:
            while self.multi.perform()[0] == self.pycurl.E_CALL_MULTI_PERFORM:
                pass
            queued = 1
            while queued:
                queued, done, failed = self.multi.info_read()
                if failed:
                    raise RuntimeError(f"pycurl: {failed[0][2]}")
                active -= sum(1 for handle in done if not self.finished(handle))
            if active:
                self.multi.select(1.0)
        for handle in handles:
            if self.file_object:
                self.state[handle]["file"].close()
            handle.close()
        self.multi.close()


def receive_pycurl_easy(url: str, size: int, fd: int, connections: int, ca: str) -> None:
    """One thread per connection, each with an easy handle of its own (the hop's shape)."""
    import pycurl

    work = ranges(size)

    def worker() -> None:
        handle = pycurl.Curl()
        position = 0

        def write(data: bytes) -> None:
            nonlocal position
            os.pwrite(fd, data, position)
            position += len(data)

        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.CAINFO, ca)
        handle.setopt(pycurl.BUFFERSIZE, 512 * 1024)
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        handle.setopt(pycurl.WRITEFUNCTION, write)
        try:
            while (taken := next_range(work)) is not None:
                position = taken[0]
                handle.setopt(pycurl.RANGE, f"{taken[0]}-{taken[1] - 1}")
                handle.perform()
                if handle.getinfo(pycurl.RESPONSE_CODE) != 206 or position != taken[1]:
                    raise RuntimeError("not the range asked for")
        finally:
            handle.close()

    run_threads(worker, connections)


def client(args: argparse.Namespace) -> int:
    """One receiver in this process: print its JSON result."""
    fd = os.open(args.out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, args.size)
    before, started = cpu_seconds(), time.perf_counter()
    if args.client in ("http.client", "http.client+bio"):
        memory_tls = args.client == "http.client+bio"
        receive_http_client(args.url, args.size, fd, args.connections, args.ca, memory_tls=memory_tls)
    elif args.client == "memorybio":
        receive_memorybio(args.url, args.size, fd, args.connections, args.ca)
    elif args.client == "pycurl-easy":
        receive_pycurl_easy(args.url, args.size, fd, args.connections, args.ca)
    else:
        file_object = args.client == "pycurl-file"
        CurlReceiver(args.url, args.size, fd, args.ca, file_object=file_object).run(args.connections)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - before
    os.close(fd)
    print(json.dumps({"seconds": seconds, "cpu": cpu}))
    return 0


# -- the driver --------------------------------------------------------------------------------------


def check_copy(out: Path, expected: Path) -> None:
    """Compare the received file with the served one, 8 MiB at a time."""
    with out.open("rb") as got, expected.open("rb") as want:
        while True:
            a, b = got.read(CHUNK), want.read(CHUNK)
            if a != b:
                raise RuntimeError(f"{out} differs from the served file")
            if not a:
                return


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="16,4")
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument("--results", type=Path, default=Path("receive-bench.json"))
    parser.add_argument("--client", choices=RECEIVERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        args.size, args.connections = int(args.size), int(args.connections)
        return client(args)

    from relayd.units import parse_size
    from relayd_sandbox.hub import FakeHub, Generated
    from relayd_sandbox.tls import ThrowawayCA

    size = parse_size(args.size)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="receive-bench-") as directory:
        work = Path(directory)
        ca = ThrowawayCA.create(work / "ca")
        hub = FakeHub(work / "hub", cdn_tls=ca.server_context).start()
        try:
            hub.create_repo("bench/model", files={"model.safetensors": Generated(size, seed=1)})
            sha256 = hub.file("bench/model", "model.safetensors").sha256
            url = hub.sign_url(sha256, ttl=24 * 3600)
            out = work / "received.bin"
            print(f"load {os.getloadavg()} at the start; {size / GiB:.2f} GiB over TLS", file=sys.stderr)
            for round_ in range(args.rounds):
                for connections in (int(n) for n in args.connections.split(",")):
                    for receiver in args.receivers.split(","):
                        load = os.getloadavg()[0]
                        command = [sys.executable, __file__, "--client", receiver, "--url", url, "--ca"]
                        command += [str(ca.ca_cert), "--out", str(out), "--size", str(size)]
                        command += ["--connections", str(connections)]
                        done = subprocess.run(command, capture_output=True, text=True, check=False)
                        if done.returncode != 0:
                            raise RuntimeError(f"{receiver} failed:\n{done.stderr[-3000:]}")
                        if round_ == 0:
                            check_copy(out, hub.blob_path(sha256))
                        result = json.loads(done.stdout.strip().splitlines()[-1])
                        row = {
                            "receiver": receiver,
                            "connections": connections,
                            "round": round_ + 1,
                            "load": load,
                            "seconds": result["seconds"],
                            "MB/s": size / result["seconds"] / 1e6,
                            "cpu_per_GiB": result["cpu"] / (size / GiB),
                        }
                        rows.append(row)
                        print(
                            f"  round {row['round']} x{connections} {receiver:12} {row['MB/s']:7.1f} MB/s "
                            f"{row['cpu_per_GiB']:.2f} CPU-s/GiB (load {load:.1f})",
                            file=sys.stderr,
                            flush=True,
                        )
                        out.unlink()
        finally:
            hub.stop()
    args.results.write_text(json.dumps(rows, indent=2))
    print(f"load {os.getloadavg()} at the end")
    print("| receiver | connections | CPU-s/GiB (each round) | median | MB/s (each round) | median |")
    print("| --- | --- | --- | --- | --- | --- |")
    for connections in (int(n) for n in args.connections.split(",")):
        for receiver in args.receivers.split(","):
            mine = [row for row in rows if row["receiver"] == receiver and row["connections"] == connections]
            cpus = [row["cpu_per_GiB"] for row in mine]
            rates = [row["MB/s"] for row in mine]
            print(
                f"| {receiver} | {connections} | {', '.join(f'{c:.2f}' for c in cpus)} | "
                f"{statistics.median(cpus):.2f} | {', '.join(f'{r:.0f}' for r in rates)} | "
                f"{statistics.median(rates):.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
