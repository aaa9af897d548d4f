"""A cuttable TCP relay on 127.0.0.1: put it between a client and a server to drop the link between them.

``cut()`` resets every connection it carries and refuses new ones (its port is closed: a client's
connect fails at once, as behind a link that is down); ``stall()`` keeps every connection open but
holds what either side sends (new connections too), as a link that loses every packet for a while and
keeps TCP's connections; ``heal()`` carries bytes again (listening on the same port after a cut). The
relay copies bytes and nothing else, so the client library and the server see a real TCP link that
breaks and comes back, e.g. a daemon's link to the shared PostgreSQL catalogue (docs/sites.md, "When the
link between the sites drops").
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from relayd_sandbox._http import free_port

CHUNK = 64 * 1024


class CuttableRelay:
    """Carries TCP connections from ``127.0.0.1:port`` to *target_host*:*target_port* until cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._upstream: set[socket.socket] = set()

    def start(self) -> CuttableRelay:
        """Listen and carry connections."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    def heal(self) -> None:
        """Carry bytes again: listen again after a cut; deliver what a stall held."""
        if self._listener is None:
            self.start()
        self._flowing.set()

    def stall(self) -> None:
        """Hold every byte either side sends, on the connections carried now and on new ones, until
        ``heal()``; no connection is closed."""
        self._flowing.clear()

    def upstream_ports(self) -> set[int]:
        """Return the local ports of the connections to the target now: the client ports the server
        sees (PostgreSQL's ``pg_stat_activity.client_port``)."""
        with self._lock:
            return {sock.getsockname()[1] for sock in self._upstream}

    def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every connection carried now."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
        with self._lock:
            carried, self._sockets = self._sockets, set()
            self._upstream = set()
        for sock in carried:
            _reset(sock)
        self._flowing.set()  # what a stall held goes nowhere: its connections are gone

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _reset(client)
                    _reset(server)
                    return
                self._sockets |= {client, server}
                self._upstream.add(server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy *source* to *sink* until either ends; then end both."""
        try:
            while data := source.recv(CHUNK):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            mine = source in self._sockets
            self._sockets -= {source, sink}
            self._upstream -= {source, sink}
        if mine:
            _reset(source)
            _reset(sink)


def _reset(sock: socket.socket) -> None:
    """Close *sock* with a TCP reset, as a broken link shows to the other end (not a polite FIN)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
