"""The key holder as a service, and the server's relay connection to it.

Everything on the socket is a length-prefixed frame: u64 length, b"PFK1", u32 JSON length, JSON
(op and scalars, plus the names and lengths of binary blobs), then the blobs; nothing is unpickled.
Ops: hello (public context, key-holder verify key, run id), open (round, n_params -> signed
announcement), submit (round, client, payload, signature -> accepted or why not), release (round ->
the one sum), shutdown. Every privacy check lives in `KeyHolder`, so whoever reaches the socket has
exactly the relay's power. `spawn_keyholder` starts `privfl keyholder serve` as a child process on
loopback (the built-in engine, tests).
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privfl.config import CkksParams, ExperimentConfig, clients_per_round, min_clients
from privfl.errors import CryptoError
from privfl.fl.secure.enrolment import write_registry
from privfl.fl.secure.keyholder import KeyHolder, Released

log = logging.getLogger(__name__)

FRAME_MAGIC = b"PFK1"
_MAX_JSON = 1 << 20
READY_PREFIX = "privfl keyholder listening on "


def encode_frame(fields: dict, blobs: dict[str, bytes] | None = None) -> bytes:
    """b"PFK1" | u32 JSON length | JSON | blobs (named with their lengths in the JSON)."""
    blobs = blobs or {}
    head = dict(fields, blobs=[[name, len(data)] for name, data in blobs.items()])
    text = json.dumps(head).encode()
    return b"".join([FRAME_MAGIC, struct.pack("<I", len(text)), text, *(bytes(b) for b in blobs.values())])


def decode_frame(frame: bytes) -> tuple[dict, dict[str, bytes]]:
    """Inverse of encode_frame; CryptoError on anything that does not add up."""
    if len(frame) < 8 or frame[:4] != FRAME_MAGIC:
        raise CryptoError("not a privfl key-holder frame (tag)")
    (n,) = struct.unpack_from("<I", frame, 4)
    if n > _MAX_JSON or 8 + n > len(frame):
        raise CryptoError(f"frame header of {n} bytes does not fit the frame")
    try:
        fields = json.loads(frame[8 : 8 + n])
        names = [(str(a), int(b)) for a, b in fields.pop("blobs")]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CryptoError(f"frame header is not the expected JSON ({exc})") from exc
    if not isinstance(fields, dict) or any(b < 0 for _, b in names):
        raise CryptoError("frame header is not the expected JSON")
    pos, blobs = 8 + n, {}
    for name, length in names:
        blobs[name] = bytes(frame[pos : pos + length])
        pos += length
    if pos != len(frame):
        raise CryptoError(f"frame blobs announce {pos} bytes, the frame has {len(frame)}")
    return fields, blobs


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack("<Q", len(data)) + data)


def recv_frame(sock: socket.socket, max_bytes: int) -> bytes | None:
    """One frame, or None when the peer closed the connection cleanly."""
    head = _recv_exact(sock, 8)
    if head is None:
        return None
    (n,) = struct.unpack("<Q", head)
    if n > max_bytes:
        raise CryptoError(f"frame of {n} bytes exceeds the {max_bytes}-byte limit")
    data = _recv_exact(sock, n)
    if data is None:
        raise CryptoError("connection closed inside a frame")
    return data


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(n - len(buf), 1 << 20))
        if not part:
            if not buf:
                return None
            raise CryptoError("connection closed inside a frame")
        buf += part
    return bytes(buf)


# --- the key-holder service --------------------------------------------------------------------------


def handle(core: KeyHolder, frame: bytes) -> tuple[bytes, bool]:
    """One request frame -> (reply frame, keep serving)."""
    try:
        fields, blobs = decode_frame(frame)
        op = fields.get("op")
        if op == "hello":
            return encode_frame(
                {"ok": True, "min_clients": core.min_clients, "max_clients": core.params.max_clients},
                {"context": core.public_context, "verify_key": core.verify_key, "run_id": core.run_id},
            ), True
        if op == "open":
            ann, sig = core.open_round(_int(fields, "round"), _int(fields, "n_params"))
            return encode_frame({"ok": True}, {"announcement": ann, "signature": sig}), True
        if op == "submit":
            reason = core.submit(
                _int(fields, "round"),
                _int(fields, "client"),
                blobs.get("payload", b""),
                blobs.get("signature", b""),
            )
            return encode_frame({"ok": True, "accepted": reason is None, "reason": reason}), True
        if op == "release":
            out = core.release(_int(fields, "round"))
            reply = {
                "ok": True,
                "weight": out.weight,
                "count": out.count,
                "clients": list(out.clients),
                "next_bounds": list(out.next_bounds),
            }
            return encode_frame(reply, {"vector": out.vector.astype("<f8").tobytes()}), True
        if op == "shutdown":
            return encode_frame({"ok": True}), False
        raise CryptoError(f"unknown op {op!r}")
    except CryptoError as exc:
        return encode_frame({"ok": False, "error": str(exc)}), True


def _int(fields: dict, key: str) -> int:
    value = fields.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise CryptoError(f"field {key!r} = {value!r} is not a 32-bit non-negative integer")
    return value


def max_frame_bytes(core: KeyHolder, n_params_limit: int = 50_000_000) -> int:
    """The largest request frame the service reads: one client's payload for the largest model."""
    slots = core.params.poly_modulus_degree // 2
    return (-(-(n_params_limit + 1) // slots)) * core._chunk_bound + (1 << 16)


def serve(core: KeyHolder, host: str, port: int, *, announce=print) -> None:
    """Accept one relay connection at a time and answer its requests until told to shut down."""
    with socket.create_server((host, port)) as server:
        bound_host, bound_port = server.getsockname()[:2]
        announce(
            f"{READY_PREFIX}{bound_host}:{bound_port} key {core.verify_key.hex()} "
            f"fingerprint {core.fingerprint.hex()}"
        )
        limit = max_frame_bytes(core)
        while True:
            conn, _ = server.accept()
            with conn:
                while True:
                    try:
                        frame = recv_frame(conn, limit)
                    except (CryptoError, OSError) as exc:
                        log.warning("relay connection dropped: %s", exc)
                        break
                    if frame is None:
                        break
                    reply, keep = handle(core, frame)
                    send_frame(conn, reply)
                    if not keep:
                        return


# --- the server's end: a relay connection ---------------------------------------------------------------


class KeyHolderClient:
    """The server's connection to the key holder: forwards bytes, holds no key."""

    def __init__(self, address: str, *, timeout: float = 600.0) -> None:
        host, _, port = address.rpartition(":")
        try:
            self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        except (OSError, ValueError) as exc:
            raise CryptoError(
                f"cannot reach the key holder at {address!r} ({exc}); start it with `privfl keyholder serve`"
            ) from exc
        self.address = address
        fields, blobs = self._call({"op": "hello"})
        self.public_context = blobs["context"]
        self.verify_key = blobs["verify_key"]
        self.run_id = blobs["run_id"]
        self.min_clients = int(fields["min_clients"])
        self.max_clients = int(fields["max_clients"])

    def _call(self, fields: dict, blobs: dict[str, bytes] | None = None) -> tuple[dict, dict[str, bytes]]:
        try:
            send_frame(self._sock, encode_frame(fields, blobs))
            frame = recv_frame(self._sock, 1 << 34)
        except OSError as exc:
            raise CryptoError(f"lost the key holder at {self.address} ({exc})") from exc
        if frame is None:
            raise CryptoError(f"the key holder at {self.address} closed the connection")
        reply, out = decode_frame(frame)
        if not reply.get("ok"):
            raise CryptoError(f"key holder: {reply.get('error')}")
        return reply, out

    def open_round(self, round_index: int, n_params: int) -> tuple[bytes, bytes]:
        _, blobs = self._call({"op": "open", "round": round_index, "n_params": n_params})
        return blobs["announcement"], blobs["signature"]

    def submit(self, round_index: int, client_id: int, payload: bytes, signature: bytes) -> str | None:
        reply, _ = self._call(
            {"op": "submit", "round": round_index, "client": client_id},
            {"payload": payload, "signature": signature},
        )
        return None if reply["accepted"] else str(reply["reason"])

    def release(self, round_index: int) -> Released:
        reply, blobs = self._call({"op": "release", "round": round_index})
        vector = np.frombuffer(blobs["vector"], dtype="<f8").astype(np.float64)
        return Released(
            vector,
            float(reply["weight"]),
            int(reply["count"]),
            tuple(int(c) for c in reply["clients"]),
            (int(reply["next_bounds"][0]), int(reply["next_bounds"][1])),
        )

    def shutdown(self) -> None:
        try:
            self._call({"op": "shutdown"})
        finally:
            self.close()

    def close(self) -> None:
        self._sock.close()


# --- spawning a key-holder process (the built-in engine, tests) -----------------------------------------


@dataclass
class KeyHolderProcess:
    """A `privfl keyholder serve` child process on loopback and what it announced when ready."""

    process: subprocess.Popen
    address: str
    verify_key: bytes
    workdir: tempfile.TemporaryDirectory

    def stop(self) -> None:
        _stop(self.process, self.workdir)


def _stop(process: subprocess.Popen, workdir) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    workdir.cleanup()


def spawn_keyholder(
    cfg: ExperimentConfig,
    registry: dict[int, bytes],
    *,
    bounds: tuple[int, int] | None = None,
    state_dir: Path | None = None,
    start_timeout: float = 120.0,
) -> KeyHolderProcess:
    """Start `python -m privfl.keyholder_cli serve` (= `privfl keyholder serve`) on 127.0.0.1 at a
    free port, and wait until it listens."""
    workdir = tempfile.TemporaryDirectory(prefix="privfl-keyholder-")
    root = Path(workdir.name)
    cfg.to_toml(root / "experiment.toml")
    write_registry(root / "registry.json", registry)
    cmd = [
        sys.executable,
        "-m",
        "privfl.keyholder_cli",
        "serve",
        "--config",
        str(root / "experiment.toml"),
        "--registry",
        str(root / "registry.json"),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    if bounds is not None:
        cmd += ["--bounds", f"{bounds[0]},{bounds[1]}"]
    if state_dir is not None:
        cmd += ["--state", str(state_dir)]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])  # the folder that holds privfl/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = _ready_line(process, time.monotonic() + start_timeout)
    if line is None or not line.startswith(READY_PREFIX):
        exited = None
        if line is not None:  # it closed its stdout: it is exiting
            try:
                exited = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _stop(process, workdir)
        why = (
            f"exited with code {exited} before it listened (its error is on stderr above)"
            if exited is not None
            else f"did not listen within {start_timeout:g} s and was stopped"
        )
        raise CryptoError(
            f"the key-holder process {why}; run `privfl keyholder serve --config <experiment.toml> "
            "--registry <registry.json>` by hand to see why"
        )
    words = line[len(READY_PREFIX) :].split()
    spawned = KeyHolderProcess(process, words[0], bytes.fromhex(words[2]), workdir)
    weakref.finalize(spawned, _stop, process, workdir)
    return spawned


def _ready_line(process: subprocess.Popen, deadline: float) -> str | None:
    """The child's ready line, "" when it closed its stdout first, None when the deadline passed
    (a child that hangs silently cannot block the caller)."""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([process.stdout], [], [], left)
        if not readable:
            return None
        line = process.stdout.readline()
        if line.startswith(READY_PREFIX) or not line:
            return line
    return None


def keyholder_settings(cfg: ExperimentConfig) -> tuple[CkksParams, int]:
    """(CKKS parameters with the public packing policy, min_clients) for an experiment's key holder."""
    params = cfg.secure.ckks_params(clients_per_round(cfg)).validate()
    return params, min_clients(cfg)
