"""The key holder in one process: every refusal with the reason it logs, rounds, state on disk.

The attacks through a real key-holder process are in test_keyholder_attacks.py; this file pins
the reasons and limits themselves, which the relay and the operator read.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from privfl.config import CkksParams
from privfl.errors import ConfigError, CryptoError
from privfl.fl.aggregate import Contribution
from privfl.fl.secure import (
    MAGIC_CONTRIBUTION,
    Encryptor,
    KeyHolder,
    RoundAnnouncement,
    _read_payload,
    _write_payload,
    enrol_clients,
)
from privfl.fl.secure.enrolment import contribution_message, payload_digest

PARAMS = CkksParams(max_clients=3)
N = 5


class Party:
    """A key holder, three enrolled clients' keys and an honest encryptor."""

    def __init__(self, params: CkksParams = PARAMS, **kwargs) -> None:
        self.keys, self.registry = enrol_clients([0, 1, 2, 3])
        self.holder = KeyHolder(params, self.registry, min_clients=2, **kwargs)
        self.encryptor = Encryptor(self.holder.verify_key, self.holder.public_context)

    def seal(self, r: int, cid: int, vector=None, weight: float = 1.0) -> tuple[bytes, bytes]:
        ann, sig = self.holder.open_round(r, N)
        v = np.full(N, float(cid + 1)) if vector is None else vector
        payload, psig, _ = self.encryptor.seal(Contribution(cid, v, weight), ann, sig, self.keys[cid])
        return payload, psig

    def resign(self, r: int, cid: int, payload: bytes) -> bytes:
        """What only the client could do: sign a payload it built (the tests play a faulty client)."""
        return self.keys[cid].sign(contribution_message(self.holder.run_id, r, cid, payload_digest(payload)))


@pytest.fixture(scope="module")
def party() -> Party:
    return Party()


def test_min_clients_and_the_registry_size_are_checked_first():
    _, registry = enrol_clients([0, 1])
    with pytest.raises(
        ConfigError,
        match=r"^min_clients=1: the key holder releases sums of at least 2 clients \(a one-client sum is "
        r"that client's update\); set secure\.min_clients >= 2$",
    ):
        KeyHolder(PARAMS, registry, min_clients=1)
    with pytest.raises(
        ConfigError,
        match=r"^the enrolment registry holds 2 client\(s\), fewer than min_clients=3: enrol more clients "
        r"\(privfl keyholder register\)$",
    ):
        KeyHolder(PARAMS, registry, min_clients=3)
    assert KeyHolder(PARAMS, registry, min_clients=2).min_clients == 2


def test_opening_a_round_is_idempotent_and_checks_its_size(party):
    h = party.holder
    first = h.open_round(10, N)
    assert h.open_round(10, N) == first
    ann = RoundAnnouncement.from_bytes(first[0])
    assert (ann.round_index, ann.n_params, ann.n_values, ann.max_clients) == (10, N, N + 1, 3)
    assert ann.bounds == (PARAMS.bound_bits, PARAMS.weight_bound_bits) and ann.run_id == h.run_id
    with pytest.raises(CryptoError, match=r"^round 10 is already open for 5 parameters$"):
        h.open_round(10, N + 1)
    for bad in (0, -1, 2**31, "5", 5.0):
        with pytest.raises(CryptoError, match=rf"^n_params={bad!r} must be a positive integer$"):
            h.open_round(11, bad)
    assert RoundAnnouncement.from_bytes(h.open_round(12, 2**31 - 1)[0]).n_params == 2**31 - 1


def test_announcements_are_refused_unless_exactly_the_format():
    ann = RoundAnnouncement(bytes(16), 1, 4, 3, (10, 20), bytes(16))
    data = ann.to_bytes()
    with pytest.raises(
        CryptoError, match=rf"^a round announcement is {len(data)} bytes, got {len(data) + 1}$"
    ):
        RoundAnnouncement.from_bytes(data + b"x")
    with pytest.raises(CryptoError, match=r"^not a privfl round announcement \(tag or layout\)$"):
        RoundAnnouncement.from_bytes(b"PFX1" + data[4:])
    wrong_count = data[:28] + (4).to_bytes(4, "little") + data[32:]  # n_values = n_params
    with pytest.raises(CryptoError, match=r"^not a privfl round announcement \(tag or layout\)$"):
        RoundAnnouncement.from_bytes(wrong_count)


def test_each_refused_submission_says_why_and_is_counted():
    p = Party()
    r = 1
    assert p.holder.submit(r, 0, *p.seal(r, 0)) is None
    payload1, sig1 = p.seal(r, 1)
    assert p.holder.submit(7, 1, payload1, sig1) == "round 7 is not open"
    assert p.holder.submit(r, 9, payload1, sig1) == "client 9 is not enrolled"
    assert p.holder.submit(r, 0, *p.seal(r, 0)) == "client 0 already contributed to round 1"
    assert p.holder.submit(r, 1, payload1, sig1[:-1] + bytes([sig1[-1] ^ 1])) == (
        "the signature is not client 1's over this run, round and payload"
    )
    limit = 1 * p.holder._chunk_bound + 4096  # N + 1 values: one ciphertext, plus the header's room
    huge = payload1 + bytes(limit)
    assert p.holder.submit(r, 1, huge, p.resign(r, 1, huge)) == (
        f"payload of {len(huge)} bytes exceeds the {limit} bytes a round payload can need"
    )
    at_limit = (payload1 + bytes(limit))[:limit]  # as large as allowed: checked, then found malformed
    assert p.holder.submit(r, 1, at_limit, p.resign(r, 1, at_limit)).startswith("malformed payload: ")
    with pytest.raises(
        CryptoError,
        match=r"^round 1: 1 verified contribution\(s\) from enrolled clients \(5 refused\), fewer than "
        r"min_clients=2; the key holder decrypts nothing for this round$",
    ):
        p.holder.release(r)
    assert p.holder.submit(r, 1, payload1, sig1) is None
    assert p.holder.submit(r, 2, *p.seal(r, 2)) is None
    assert p.holder.submit(r, 3, *p.seal(r, 3)) == "the round already holds max_clients=3 contributions"
    released = p.holder.release(r)
    assert released.count == 3 and released.clients == (0, 1, 2)
    np.testing.assert_allclose(released.vector, np.full(N, 1.0 + 2.0 + 3.0), rtol=1e-5)
    assert released.weight == pytest.approx(3.0, rel=1e-5)  # CKKS: within its precision
    assert p.holder.submit(r, 3, *p.seal(2, 3)) == "round 1 was already released"


def _forged(p: Party, r: int, cid: int, **changes) -> tuple[bytes, bytes]:
    """Client cid's honest payload with header fields changed (or chunks dropped), re-signed by cid."""
    header, chunks = _read_payload(p.seal(r, cid)[0], MAGIC_CONTRIBUTION)
    chunks = changes.pop("chunks", chunks)
    if changes.pop("twice", False):
        chunks = chunks * 2
        changes["n_chunks"] = len(chunks)
    payload = _write_payload(dataclasses.replace(header, **changes), chunks)
    return payload, p.resign(r, cid, payload)


def test_a_signed_but_malformed_payload_is_refused_by_what_is_wrong(party):
    p, r = party, 20
    cases = [
        ({"fingerprint": bytes(16)}, "malformed payload: encrypted under another context"),
        ({"round_index": r + 1}, "malformed payload: round or sizes differ from the announcement"),
        ({"n_params": N + 1}, "malformed payload: round or sizes differ from the announcement"),
        ({"n_values": N + 2}, "malformed payload: round or sizes differ from the announcement"),
        ({"bound_bits": (3, 4)}, "malformed payload: packed at other bounds than announced"),
        ({"count": 2}, "malformed payload: packed at other bounds than announced"),
        ({"twice": True}, "malformed payload: 2 chunks, the round needs 1"),
        ({"chunks": [], "n_chunks": 0}, "malformed payload: 0 chunks, the round needs 1"),
        ({"magic": b"PFA1"}, "malformed payload: payload tag b'PFA1' is not b'PFC1'"),
    ]
    for changes, reason in cases:
        assert p.holder.submit(r, 0, *_forged(p, r, 0, **changes)) == reason, changes
    garbled = p.holder.submit(r, 0, *_forged(p, r, 0, chunks=[b"not a ciphertext"]))
    assert garbled.startswith("malformed payload: chunk 0 does not deserialise as a CKKS ciphertext of this")


def test_each_refusal_is_logged_with_round_client_and_reason(party, caplog):
    payload, sig = party.seal(30, 1)
    with caplog.at_level("WARNING", logger="privfl.fl.secure.keyholder"):
        assert party.holder.submit(30, 9, payload, sig) == "client 9 is not enrolled"
    assert caplog.messages == ["round 30: refused client 9: client 9 is not enrolled"]


def test_release_refuses_unknown_and_released_rounds_and_adapts_the_next_bounds():
    p = Party()
    with pytest.raises(CryptoError, match=r"^round 4 was never opened$"):
        p.holder.release(4)
    for cid in (0, 1):
        assert p.holder.submit(0, cid, *p.seal(0, cid, vector=np.full(N, 100.0), weight=8.0)) is None
    released = p.holder.release(0)
    assert released.next_bounds == PARAMS.next_bounds(
        (PARAMS.bound_bits, PARAMS.weight_bound_bits), float(np.max(np.abs(released.vector))), released.weight
    )
    assert RoundAnnouncement.from_bytes(p.holder.open_round(1, N)[0]).bounds == released.next_bounds
    with pytest.raises(CryptoError, match=r"^round 0 was already released; a second sum is refused$"):
        p.holder.release(0)
    with pytest.raises(
        CryptoError, match=r"^round 0 was already released; the key holder releases one sum per round$"
    ):
        p.holder.open_round(0, N)


def test_state_on_disk_keeps_keys_run_id_bounds_and_released_rounds(tmp_path):
    state = tmp_path / "keyholder" / "state"  # folders made as needed
    p = Party(state_dir=state)
    for cid in (0, 1):
        assert p.holder.submit(0, cid, *p.seal(0, cid)) is None
    released = p.holder.release(0)
    body = json.loads((state / "keyholder.json").read_text())
    assert body == {
        "format": 1,
        "run_id": p.holder.run_id.hex(),
        "released": [0],
        "bounds": list(released.next_bounds),
    }
    for name in ("secret-context.bin", "signing-key.bin", "keyholder.json"):
        assert (state / name).stat().st_mode & 0o777 == 0o600
    again = KeyHolder(PARAMS, p.registry, min_clients=2, state_dir=state)
    assert (again.run_id, again.verify_key, again.fingerprint) == (
        p.holder.run_id,
        p.holder.verify_key,
        p.holder.fingerprint,
    )
    with pytest.raises(CryptoError, match="already released"):
        again.open_round(0, N)
    assert RoundAnnouncement.from_bytes(again.open_round(1, N)[0]).bounds == released.next_bounds


def test_unreadable_or_incomplete_state_is_refused_naming_the_directory(tmp_path):
    p = Party(state_dir=tmp_path)
    (tmp_path / "keyholder.json").write_text('{"run_id": "zz"}')
    with pytest.raises(
        CryptoError, match=r"^key-holder state in .* is unreadable \(.+\); start with an empty --state$"
    ):
        KeyHolder(PARAMS, p.registry, min_clients=2, state_dir=tmp_path)
    body = {"format": 1, "run_id": "00ff", "released": [], "bounds": [10, 20]}
    (tmp_path / "keyholder.json").write_text(json.dumps(body))
    with pytest.raises(
        CryptoError, match=r"^key-holder state in .* is incomplete; start with an empty --state$"
    ):
        KeyHolder(PARAMS, p.registry, min_clients=2, state_dir=tmp_path)
    body["run_id"] = p.holder.run_id.hex()
    (tmp_path / "keyholder.json").write_text(json.dumps(body))
    public = p.holder.public_context  # a context without its secret key
    (tmp_path / "secret-context.bin").write_bytes(public)
    with pytest.raises(CryptoError, match=r"is incomplete; start with an empty --state$"):
        KeyHolder(PARAMS, p.registry, min_clients=2, state_dir=tmp_path)
