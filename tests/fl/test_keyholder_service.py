"""The key-holder service in one process: frames, the socket, each op's reply, the relay's errors."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

import privfl
from privfl.config import CkksParams, ExperimentConfig
from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution
from privfl.fl.secure import Encryptor, KeyHolder, RoundAnnouncement, enrol_clients, service
from privfl.fl.secure.service import (
    KeyHolderClient,
    decode_frame,
    encode_frame,
    handle,
    keyholder_settings,
    max_frame_bytes,
    recv_frame,
    send_frame,
    serve,
    spawn_keyholder,
)

PARAMS = CkksParams(max_clients=3)
N = 4


def frame_with(header: bytes, body: bytes = b"") -> bytes:
    return b"PFK1" + struct.pack("<I", len(header)) + header + body


def refusal(frame: bytes) -> str:
    with pytest.raises(CryptoError) as info:
        decode_frame(frame)
    return str(info.value)


def test_frames_without_blobs_round_trip_and_malformed_ones_are_refused_by_reason():
    assert decode_frame(encode_frame({"op": "hello"})) == ({"op": "hello"}, {})
    assert refusal(b"PFK1") == "not a privfl key-holder frame (tag)"
    assert refusal(b"XXXX" + bytes(8)) == "not a privfl key-holder frame (tag)"
    # the 8 bytes of tag and length alone: a frame whose (empty) header is not JSON
    assert refusal(b"PFK1" + struct.pack("<I", 0)).startswith("frame header is not the expected JSON (")
    # the header length is unsigned: 2^32 - 1 is a length that cannot fit, not -1
    huge = b"PFK1" + struct.pack("<I", 2**32 - 1) + b"{}"
    assert refusal(huge) == f"frame header of {2**32 - 1} bytes does not fit the frame"
    assert (
        refusal(b"PFK1" + struct.pack("<I", 10) + b"{}") == "frame header of 10 bytes does not fit the frame"
    )
    too_long = b"PFK1" + struct.pack("<I", (1 << 20) + 1) + bytes((1 << 20) + 1)
    assert refusal(too_long) == f"frame header of {(1 << 20) + 1} bytes does not fit the frame"
    assert refusal(frame_with(b"not json")).startswith("frame header is not the expected JSON (")
    assert refusal(frame_with(b'{"op": "x"}')).startswith(
        "frame header is not the expected JSON ("
    )  # no blobs
    assert refusal(frame_with(b'[["a", 1]]')).startswith("frame header is not the expected JSON (")
    assert refusal(frame_with(b'{"blobs": [["a", -1]]}')) == "frame header is not the expected JSON"
    assert (
        refusal(frame_with(b'{"blobs": [["a", 3]]}', b"ab"))  # 8 + 21 JSON + 2 of 3 blob bytes
        == "frame blobs announce 32 bytes, the frame has 31"
    )
    header = json.dumps({"blobs": [["a", 2], ["b", 1]]}).encode()
    assert decode_frame(frame_with(header, b"xyz")) == ({}, {"a": b"xy", "b": b"z"})


def test_a_json_header_up_to_the_limit_is_read():
    header = json.dumps({"blobs": [], "pad": "x" * ((1 << 20) - 24)}).encode()
    assert len(header) == 1 << 20
    fields, blobs = decode_frame(frame_with(header))
    assert len(fields["pad"]) == (1 << 20) - 24 and blobs == {}


def test_frames_cross_a_socket_and_a_closed_or_oversized_one_is_refused():
    a, b = socket.socketpair()
    with a, b:
        send_frame(a, b"hello")
        assert recv_frame(b, 5) == b"hello"
        send_frame(a, b"x" * 6)
        with pytest.raises(CryptoError, match=r"^frame of 6 bytes exceeds the 5-byte limit$"):
            recv_frame(b, 5)
    a, b = socket.socketpair()
    with b:
        a.sendall(struct.pack("<Q", 10) + b"abc")
        a.close()
        with pytest.raises(CryptoError, match=r"^connection closed inside a frame$"):
            recv_frame(b, 100)
    a, b = socket.socketpair()
    with b:
        a.sendall(b"\x05\x00")  # half a length prefix
        a.close()
        with pytest.raises(CryptoError, match=r"^connection closed inside a frame$"):
            recv_frame(b, 100)
    a, b = socket.socketpair()
    with b:
        a.close()
        assert recv_frame(b, 100) is None  # closed between frames: the relay hung up


def test_a_frame_larger_than_one_receive_arrives_whole():
    a, b = socket.socketpair()
    data = bytes(range(256)) * 9000  # > 2 MiB: several recv calls
    with a, b:
        sender = threading.Thread(target=send_frame, args=(a, data))
        sender.start()
        assert recv_frame(b, len(data)) == data
        sender.join()


class Core:
    def __init__(self) -> None:
        self.keys, registry = enrol_clients([0, 1, 2])
        self.holder = KeyHolder(PARAMS, registry, min_clients=2)
        self.encryptor = Encryptor(self.holder.verify_key, self.holder.public_context)

    def call(self, fields: dict, blobs: dict | None = None) -> tuple[dict, dict, bool]:
        reply, keep = handle(self.holder, encode_frame(fields, blobs))
        return (*decode_frame(reply), keep)


def test_each_op_answers_with_what_the_relay_needs():
    core = Core()
    fields, blobs, keep = core.call({"op": "hello"})
    assert keep and fields == {"ok": True, "min_clients": 2, "max_clients": 3}
    assert blobs == {
        "context": core.holder.public_context,
        "verify_key": core.holder.verify_key,
        "run_id": core.holder.run_id,
    }
    fields, blobs, keep = core.call({"op": "open", "round": 0, "n_params": N})
    assert (
        keep
        and fields == {"ok": True}
        and (blobs["announcement"], blobs["signature"]) == core.holder.open_round(0, N)
    )
    for cid in (0, 1):
        payload, sig, _ = core.encryptor.seal(
            Contribution(cid, np.full(N, cid + 1.0), 2.0),
            blobs["announcement"],
            blobs["signature"],
            core.keys[cid],
        )
        reply, _, _ = core.call(
            {"op": "submit", "round": 0, "client": cid}, {"payload": payload, "signature": sig}
        )
        assert reply == {"ok": True, "accepted": True, "reason": None}
    reply, _, _ = core.call({"op": "submit", "round": 0, "client": 2})  # no payload, no signature
    assert reply == {
        "ok": True,
        "accepted": False,
        "reason": "the signature is not client 2's over this run, round and payload",
    }
    fields, blobs, keep = core.call({"op": "release", "round": 0})
    assert keep and fields["ok"] and fields["count"] == 2 and fields["clients"] == [0, 1]
    assert fields["weight"] == pytest.approx(4.0, rel=1e-5) and len(fields["next_bounds"]) == 2
    np.testing.assert_allclose(np.frombuffer(blobs["vector"], dtype="<f8"), np.full(N, 3.0), rtol=1e-5)
    fields, _, keep = core.call({"op": "shutdown"})
    assert fields == {"ok": True} and not keep


def test_bad_requests_get_an_error_reply_and_the_service_goes_on():
    core = Core()
    cases = [
        ({"op": "dance"}, "unknown op 'dance'"),
        ({}, "unknown op None"),
        (
            {"op": "open", "round": -1, "n_params": N},
            "field 'round' = -1 is not a 32-bit non-negative integer",
        ),
        (
            {"op": "open", "round": 2**32, "n_params": N},
            f"field 'round' = {2**32} is not a 32-bit non-negative integer",
        ),
        (
            {"op": "open", "round": True, "n_params": N},
            "field 'round' = True is not a 32-bit non-negative integer",
        ),
        (
            {"op": "open", "round": "1", "n_params": N},
            "field 'round' = '1' is not a 32-bit non-negative integer",
        ),
        ({"op": "open", "round": 1}, "field 'n_params' = None is not a 32-bit non-negative integer"),
        (
            {"op": "submit", "round": 1, "client": 2**32},
            f"field 'client' = {2**32} is not a 32-bit non-negative integer",
        ),
        ({"op": "release", "round": 3}, "round 3 was never opened"),
    ]
    for request, error in cases:
        fields, blobs, keep = core.call(request)
        assert (fields, blobs, keep) == ({"ok": False, "error": error}, {}, True), request
    reply, keep = handle(core.holder, b"garbage")
    assert decode_frame(reply)[0] == {"ok": False, "error": "not a privfl key-holder frame (tag)"} and keep
    fields, _, _ = core.call({"op": "open", "round": 2**32 - 1, "n_params": N})
    assert fields == {"ok": True}  # the largest round index a u32 holds


def test_the_frame_limit_admits_a_whole_payload_of_the_largest_model():
    core = Core()
    ann, sig = core.holder.open_round(0, 5000)  # two ciphertexts at N = 4096
    payload, psig, _ = core.encryptor.seal(Contribution(0, np.ones(5000), 1.0), ann, sig, core.keys[0])
    frame = encode_frame({"op": "submit", "round": 0, "client": 0}, {"payload": payload, "signature": psig})
    assert len(frame) <= max_frame_bytes(core.holder, n_params_limit=5000)
    assert max_frame_bytes(core.holder) >= max_frame_bytes(core.holder, n_params_limit=5000)


def test_serve_answers_a_relay_until_it_says_shutdown(caplog):
    core = Core()
    announced: list[str] = []
    ready = threading.Event()

    def announce(line: str) -> None:
        announced.append(line)
        ready.set()

    thread = threading.Thread(target=serve, args=(core.holder, "127.0.0.1", 0), kwargs={"announce": announce})
    thread.start()
    assert ready.wait(30)
    words = announced[0].removeprefix("privfl keyholder listening on ").split()
    assert words[1:] == ["key", core.holder.verify_key.hex(), "fingerprint", core.holder.fingerprint.hex()]
    # a relay that hangs up between frames, or drops its connection mid-frame, does not stop the service
    KeyHolderClient(words[0], timeout=30).close()
    host, port = words[0].rsplit(":", 1)
    with socket.create_connection((host, int(port))) as dropped:
        dropped.sendall(struct.pack("<Q", 100) + b"abc")
    relay = KeyHolderClient(words[0], timeout=30)
    assert "relay connection dropped: connection closed inside a frame" in caplog.messages
    assert (relay.public_context, relay.verify_key, relay.run_id) == (
        core.holder.public_context,
        core.holder.verify_key,
        core.holder.run_id,
    )
    assert (relay.min_clients, relay.max_clients) == (2, 3)
    ann, sig = relay.open_round(1, N)
    for cid in (0, 1, 2):
        payload, psig, _ = core.encryptor.seal(
            Contribution(cid, np.full(N, 1.0), 1.0), ann, sig, core.keys[cid]
        )
        assert relay.submit(1, cid, payload, psig) is None
    assert relay.submit(1, 0, b"", b"") == "client 0 already contributed to round 1"
    released = relay.release(1)
    assert released.count == 3 and released.clients == (0, 1, 2)
    assert released.weight == pytest.approx(3.0, rel=1e-5)
    next_announcement, _ = relay.open_round(2, N)  # round 2 is announced with the bounds released
    assert released.next_bounds == RoundAnnouncement.from_bytes(next_announcement).bounds
    np.testing.assert_allclose(released.vector, np.full(N, 3.0), rtol=1e-5)
    with pytest.raises(
        CryptoError, match=r"^key holder: round 1 was already released; a second sum is refused$"
    ):
        relay.release(1)
    relay.shutdown()
    thread.join(30)
    assert not thread.is_alive()


def test_an_unreachable_key_holder_is_named_with_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, nobody listens after the close
    with pytest.raises(
        CryptoError,
        match=rf"^cannot reach the key holder at '127\.0\.0\.1:{port}' \(.+\); "
        r"start it with `privfl keyholder serve`$",
    ):
        KeyHolderClient(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(CryptoError, match=r"^cannot reach the key holder at 'nowhere'"):
        KeyHolderClient("nowhere", timeout=5)


def test_key_holder_settings_follow_the_rounds_size():
    cfg = ExperimentConfig().override({"secure.scheme": "ckks", "train.clients": 5, "train.fraction": 0.6})
    params, min_clients = keyholder_settings(cfg.validate())
    assert params.max_clients == 3 and min_clients == 3
    params, min_clients = keyholder_settings(
        ExperimentConfig().override({"secure.scheme": "ckks", "train.clients": 2}).validate()
    )
    assert params.max_clients == 2 and min_clients == 2


def test_a_spawned_key_holder_starts_at_the_given_bounds_and_keeps_its_state_where_told(tmp_path):
    from privfl.fl.secure import RoundAnnouncement
    from privfl.fl.secure.service import spawn_keyholder

    cfg = ExperimentConfig().override({"secure.scheme": "ckks", "train.clients": 2}).validate()
    _, registry = enrol_clients([0, 1])
    state = tmp_path / "state"
    spawned = spawn_keyholder(cfg, registry, bounds=(12, 21), state_dir=state)
    try:
        relay = KeyHolderClient(spawned.address, timeout=60)
        assert relay.verify_key == spawned.verify_key
        announcement, _ = relay.open_round(0, 3)
        assert RoundAnnouncement.from_bytes(announcement).bounds == (12, 21)
        relay.shutdown()
    finally:
        spawned.stop()
    assert json.loads((state / "keyholder.json").read_text())["bounds"] == [12, 21]


def test_a_relay_reaches_a_key_holder_on_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        socket.create_server(("::1", 0)).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    core, announced, ready = Core(), [], threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(core.holder, "::1", 0),
        kwargs={"announce": lambda line: (announced.append(line), ready.set())},
    )
    thread.start()
    assert ready.wait(30)
    address = announced[0].removeprefix("privfl keyholder listening on ").split()[0]
    assert address.startswith("::1:")  # host:port, the port after the last colon
    relay = KeyHolderClient(address, timeout=30)
    assert relay.verify_key == core.holder.verify_key
    relay.shutdown()
    thread.join(30)
    assert not thread.is_alive()


def test_a_relay_does_not_wait_forever_on_a_silent_key_holder():
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(CryptoError, match=rf"^lost the key holder at {address} \(timed out\)$"):
            KeyHolderClient(address, timeout=0.2)


# --- spawn_keyholder with stand-in children (shell scripts): what it starts, stops and reports ---------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; sh scripts")
SPAWN_CFG = ExperimentConfig().override({"secure.scheme": "ckks", "train.clients": 2}).validate()


def stand_in(tmp_path, monkeypatch, body: str) -> list[subprocess.Popen]:
    """Make spawn_keyholder run `body` (sh) instead of Python; returns the processes it starts."""
    script = tmp_path / "child.sh"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    started, popen = [], subprocess.Popen

    def recording(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(service.subprocess, "Popen", recording)
    return started


def exec_environ(pid: int, program: str, timeout: float = 10.0) -> dict[str, str]:
    """The environment `pid` runs `program` with, read once its exec has finished.

    The stand-in execs after announcing itself, so spawn_keyholder can return while the child is
    mid-exec, when /proc/<pid>/environ reads empty.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        if argv[0] == program.encode() and raw:
            return dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not exec {program} within {timeout} s")


def gone(process: subprocess.Popen) -> bool:
    """The child was stopped (not left running) and its pipe closed."""
    return process.poll() is not None and process.stdout.closed


@linux_only
@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("exit 3", r"exited with code 3 before it listened \(its error is on stderr above\)"),
        ("exec sleep 30", r"did not listen within 0\.5 s and was stopped"),  # hangs silently
    ],
)
def test_a_key_holder_that_fails_to_start_is_stopped_cleaned_up_and_named(tmp_path, monkeypatch, body, why):
    started = stand_in(tmp_path, monkeypatch, body)
    t0 = time.monotonic()
    with pytest.raises(
        CryptoError,
        match=rf"^the key-holder process {why}; run `privfl keyholder serve --config <experiment\.toml> "
        r"--registry <registry\.json>` by hand to see why$",
    ):
        spawn_keyholder(SPAWN_CFG, enrol_clients([0, 1])[1], start_timeout=0.5)
    assert time.monotonic() - t0 < 10
    (process,) = started
    assert gone(process)
    config = Path(process.args[process.args.index("--config") + 1])
    assert not config.parent.exists()  # its temporary folder (config, registry) is removed


@linux_only
@pytest.mark.parametrize("outer", ["/elsewhere/lib", None])
def test_a_spawned_key_holder_imports_this_privfl_and_is_stopped_when_dropped(tmp_path, monkeypatch, outer):
    ready = "privfl keyholder listening on 127.0.0.1:9 key 0a0b fingerprint 0c"
    started = stand_in(tmp_path, monkeypatch, f'echo "{ready}"; exec sleep 30')
    if outer is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", outer)
    spawned = spawn_keyholder(SPAWN_CFG, enrol_clients([0, 1])[1])
    assert (spawned.address, spawned.verify_key) == ("127.0.0.1:9", bytes.fromhex("0a0b"))
    (process,) = started
    environ = exec_environ(process.pid, "sleep")
    package_root = str(Path(privfl.__file__).resolve().parents[1])  # the folder that holds privfl/
    assert environ["PYTHONPATH"] == os.pathsep.join([package_root] + ([outer] if outer else []))
    folder = Path(spawned.workdir.name)
    assert (folder / "experiment.toml").exists() and (folder / "registry.json").exists()
    assert process.poll() is None
    errors = []  # what a failing finaliser reports (it cannot raise)
    monkeypatch.setattr(sys, "unraisablehook", errors.append)
    del spawned  # dropped without stop(): its finaliser stops the child and removes its folder
    gc.collect()
    assert gone(process) and process.returncode == -signal.SIGTERM and not folder.exists()
    # (other tests' leftovers may report here too: only this finaliser's own errors count)
    assert not [e for e in errors if any(f.name == "_stop" for f in traceback.extract_tb(e.exc_traceback))]
