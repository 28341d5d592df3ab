"""The control socket of a running nooks host: status and fault injection.

Each host listens on ``/run/nooks/<id>.sock`` (``NOOKS_RUN_DIR`` overrides the
directory). A client sends one JSON object per line — ``{"cmd": "status"}`` or
``{"cmd": "inject", "fault": "segv"}`` — and gets one JSON object back. Bad
requests get ``{"error": "..."}``; nothing a client sends can stop the host.

Rules:

* Beside each socket, ``<id>.json`` records the host (name, pid, class,
  mountpoint), so that a host that died without cleaning up (SIGKILL) is still
  known: ``stale()`` lists such records, ``forget`` removes them.
* A host that dies without closing its socket leaves it behind: the next host of
  that name replaces it, and whoever started the host can remove it
  (``remove_stale``).
* A process running in a nooks domain (a driver, or anything it started) is
  refused: a driver must not inject faults into other drivers or read their
  hosts' state.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from nooks.domain.cgroup import process_alive

log = logging.getLogger(__name__)

MAX_REQUEST = 64 << 10


def run_dir() -> str:
    return os.environ.get("NOOKS_RUN_DIR", "/run/nooks")


def socket_path(name: str) -> str:
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    return os.path.join(run_dir(), f"{digest}.sock")


class ControlServer:
    def __init__(self, name: str, handle: Callable[[dict[str, Any]], Any],
                 info: dict[str, Any] | None = None) -> None:
        self.name = name
        self.path = socket_path(name)
        self._handle = handle
        os.makedirs(run_dir(), exist_ok=True)
        if os.path.exists(self.path):
            if _alive(self.path):
                raise RuntimeError(f"a nooks host named {name!r} is already running")
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self._sock.listen(8)
        record = {"name": name, "pid": os.getpid(), **(info or {})}
        tmp = record_path(self.path) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(record))
        os.replace(tmp, record_path(self.path))
        self._thread = threading.Thread(target=self._serve, name="nooks-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            try:
                if _from_domain(conn):
                    raise PermissionError("a driver's domain may not use a host's control "
                                          "socket")
                line = _readline(conn)
                req = msgspec.json.decode(line)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError("a request is a JSON object with a string 'cmd'")
                reply = self._handle(req)
            except Exception as e:
                reply = {"error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(OSError):
                conn.sendall(msgspec.json.encode(reply) + b"\n")

    def close(self) -> None:
        self._sock.close()
        forget(self.path)


def record_path(sock_path: str) -> str:
    return sock_path.removesuffix(".sock") + ".json"


def forget(sock_path: str) -> None:
    """Remove a host's socket and record."""
    for path in (sock_path, record_path(sock_path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _from_domain(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid = struct.unpack("3i", creds)[0]
    return pid > 0 and in_domain(pid)


def in_domain(pid: int) -> bool:
    """Whether process ``pid`` runs in a nooks domain: its cgroup is one of the domains'
    (``/nooks/...``, see nooks.domain.cgroup), or its environment has the marker every
    domain gets (``NOOKS_DOMAIN``, see nooks.domain.incarnation)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.rpartition(":")[2].startswith("/nooks/"):
                return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
        return b"\0NOOKS_DOMAIN=" in b"\0" + f.read()
    return False


def _readline(conn: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too long")
    return buf.split(b"\n", 1)[0]


def _alive(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
        return True
    except OSError:
        return False


def remove_stale(name: str) -> bool:
    """Remove the socket of host ``name`` if it is there and nobody answers on it (the
    host died without closing it); whether it was removed."""
    path = socket_path(name)
    if not os.path.exists(path) or _alive(path):
        return False
    forget(path)
    return True


def request(path: str, req: dict[str, Any], timeout: float = 10.0) -> Any:
    """Send one request to the host at ``path``; its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(msgspec.json.encode(req) + b"\n")
        return msgspec.json.decode(_readline(s))


def stale() -> list[tuple[str, dict[str, Any]]]:
    """(socket path, record) of hosts that died without cleaning up: their process is
    gone and their socket answers nobody."""
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        entries = sorted(os.listdir(run_dir()))
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.endswith(".json"):
            continue
        path = os.path.join(run_dir(), entry)
        try:
            with open(path, "rb") as f:
                rec = msgspec.json.decode(f.read())
        except (OSError, msgspec.DecodeError):
            continue
        if not isinstance(rec, dict):
            continue
        sock = path.removesuffix(".json") + ".sock"
        if not _alive(sock) and not process_alive(rec.get("pid")):
            out.append((sock, rec))
    return out


def hosts() -> Iterator[tuple[str, Any]]:
    """(socket path, status) of every running host."""
    try:
        entries = sorted(os.listdir(run_dir()))
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.endswith(".sock"):
            continue
        path = os.path.join(run_dir(), entry)
        try:
            yield path, request(path, {"cmd": "status"}, timeout=5.0)
        except (OSError, msgspec.DecodeError):
            continue
