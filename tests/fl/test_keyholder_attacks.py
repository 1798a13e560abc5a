"""Attacks on CKKS secure aggregation, run against the shipped parties: a real `privfl keyholder
serve` process on loopback, the relay connection a server holds, and clients that pin the key
holder's key. The attacker is the server: it has the public context, every announcement, every
signed payload it relays, and the socket; it has no client's signing key and no secret key.

Each attack must fail to recover one client's update: the key holder refuses, or what comes back
is the sum of every client in the round. Client A's update is the target throughout.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts

from privfl.config import ExperimentConfig
from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution
from privfl.fl.secure import MAGIC_AGGREGATE, _Header, _read_payload, _write_payload
from privfl.fl.secure.encryptor import Encryptor
from privfl.fl.secure.enrolment import SigningKey, contribution_message, enrol_clients, payload_digest
from privfl.fl.secure.keyholder import KeyHolder, RoundAnnouncement, signed_announcement_message
from privfl.fl.secure.packing import pack_one
from privfl.fl.secure.service import (
    KeyHolderClient,
    decode_frame,
    encode_frame,
    keyholder_settings,
    recv_frame,
    send_frame,
    spawn_keyholder,
)

N_PARAMS = 3000  # two ciphertexts at N=4096, so chunk handling is exercised
CLIENTS = [0, 1, 2, 3]
A, B, C, D = CLIENTS
CFG = ExperimentConfig().override({"secure.scheme": "ckks", "train.clients": 4}).validate()


@pytest.fixture(scope="module")
def party():
    """One key-holder process for the module, its enrolled clients' keys, and the server's relay."""
    keys, registry = enrol_clients(CLIENTS)
    process = spawn_keyholder(CFG, registry)
    relay = KeyHolderClient(process.address)
    yield process, keys, registry, relay
    relay.shutdown()
    process.stop()


class Round:
    """One round as the server sees it: the announcement it relays and what the clients send back."""

    def __init__(self, party, r: int, n_params: int = N_PARAMS) -> None:
        process, self.keys, _, self.relay = party
        self.r = r
        self.announcement, self.signature = self.relay.open_round(r, n_params)
        self.encryptor = Encryptor(process.verify_key, self.relay.public_context)
        rng = np.random.default_rng([15, r])
        self.updates = {
            c: (rng.normal(0, 0.01, n_params) * (c + 1) * 40, float(40 * (c + 1))) for c in CLIENTS
        }

    def seal(self, cid: int, vector=None, weight=None) -> tuple[bytes, bytes]:
        v, w = self.updates[cid]
        vector = v if vector is None else vector
        weight = w if weight is None else weight
        payload, sig, _ = self.encryptor.seal(
            Contribution(cid, vector, weight), self.announcement, self.signature, self.keys[cid]
        )
        return payload, sig

    def plain_sum(self, cids) -> tuple[np.ndarray, float]:
        return sum(self.updates[c][0] for c in cids), sum(self.updates[c][1] for c in cids)


def assert_is_sum(released, rnd: Round, cids) -> None:
    vector, weight = rnd.plain_sum(cids)
    rel = float(np.max(np.abs(released.vector - vector))) / float(np.max(np.abs(vector)))
    assert rel < 1e-6, rel
    assert abs(released.weight - weight) / weight < 1e-6
    assert sorted(released.clients) == sorted(cids) and released.count == len(cids)


def recovered_target(released, rnd: Round) -> float:
    """Relative error of the released vector as an estimate of client A's update alone."""
    target = rnd.updates[A][0]
    return float(np.max(np.abs(released.vector - target))) / float(np.max(np.abs(target)))


# --- the honest baseline ------------------------------------------------------------------------------
def test_honest_round_decrypts_to_the_plaintext_fedavg_sum(party):
    rnd = Round(party, 1)
    for cid in CLIENTS:
        assert rnd.relay.submit(rnd.r, cid, *rnd.seal(cid)) is None
    released = rnd.relay.release(rnd.r)
    assert_is_sum(released, rnd, CLIENTS)
    assert recovered_target(released, rnd) > 0.5  # the sum is nowhere near A alone


# --- attack 1: forged count ---------------------------------------------------------------------------
def test_attack1_forged_count_relabelled_payload_is_refused(party):
    rnd = Round(party, 2)
    payload, sig = rnd.seal(A)
    # the old attack: re-tag A's payload as an aggregate of 3 and ask for it to be decrypted
    header, chunks = _read_payload(payload, b"PFC1")
    forged = _write_payload(
        _Header(
            MAGIC_AGGREGATE,
            header.fingerprint,
            rnd.r,
            header.n_params,
            header.n_values,
            header.n_chunks,
            3,
            header.bound_bits,
        ),
        chunks,
    )
    assert rnd.relay.submit(rnd.r, A, payload, sig) is None
    assert "already contributed" in rnd.relay.submit(rnd.r, A, payload, sig)
    assert "signature" in rnd.relay.submit(rnd.r, B, payload, sig)  # A's bytes relabelled as B
    assert "signature" in rnd.relay.submit(rnd.r, C, forged, sig)
    with pytest.raises(CryptoError, match="fewer than min_clients"):
        rnd.relay.release(rnd.r)


# --- attack 2: padding with the server's own encryptions -------------------------------------------
def test_attack2_padding_with_server_encrypted_zeros_is_refused(party):
    rnd = Round(party, 3)
    assert rnd.relay.submit(rnd.r, A, *rnd.seal(A)) is None
    server_key = SigningKey.generate()  # the server can make keys, not enrolled ones
    for fake in (B, C, 97, 98):
        zeros, _, _ = rnd.encryptor.seal(  # the public key encrypts zeros perfectly well
            Contribution(fake, np.zeros(N_PARAMS), 0.0), rnd.announcement, rnd.signature, server_key
        )
        ann = RoundAnnouncement.from_bytes(rnd.announcement)
        forged_sig = server_key.sign(contribution_message(ann.run_id, rnd.r, fake, payload_digest(zeros)))
        reason = rnd.relay.submit(rnd.r, fake, zeros, forged_sig)
        assert reason is not None and ("not enrolled" in reason or "signature" in reason)
    with pytest.raises(CryptoError, match="1 verified contribution"):
        rnd.relay.release(rnd.r)


# --- attack 3: differencing two sums of one round ----------------------------------------------------
def test_attack3_second_sum_of_the_same_round_is_refused(party):
    rnd = Round(party, 4)
    sealed = {cid: rnd.seal(cid) for cid in (A, B, C)}
    for cid, (payload, sig) in sealed.items():
        assert rnd.relay.submit(rnd.r, cid, payload, sig) is None
    first = rnd.relay.release(rnd.r)
    assert_is_sum(first, rnd, (A, B, C))
    for cid in (B, C):  # replay B and C for a sum {B, C} to subtract
        assert "already released" in rnd.relay.submit(rnd.r, cid, *sealed[cid])
    with pytest.raises(CryptoError, match="already released"):
        rnd.relay.release(rnd.r)
    with pytest.raises(CryptoError, match="already released"):
        rnd.relay.open_round(rnd.r, N_PARAMS)
    # the same payloads in the next round: signed for round 4, refused in round 5
    nxt = Round(party, 5)
    for cid in (B, C):
        assert "signature" in nxt.relay.submit(nxt.r, cid, *sealed[cid])
    for cid in (B, C, D):
        assert nxt.relay.submit(nxt.r, cid, *nxt.seal(cid)) is None
    second = nxt.relay.release(nxt.r)
    assert_is_sum(second, nxt, (B, C, D))  # fresh updates: first - second is not A


def test_attack3_a_restarted_key_holder_with_state_still_refuses_the_round(tmp_path):
    keys, registry = enrol_clients(CLIENTS)
    state = tmp_path / "kh-state"
    first = spawn_keyholder(CFG, registry, state_dir=state)
    relay = KeyHolderClient(first.address)
    ann, sig = relay.open_round(7, 10)
    enc = Encryptor(first.verify_key, relay.public_context)
    rng = np.random.default_rng(3)
    for cid in (A, B, C):
        payload, psig, _ = enc.seal(Contribution(cid, rng.normal(size=10), 1.0), ann, sig, keys[cid])
        assert relay.submit(7, cid, payload, psig) is None
    relay.release(7)
    relay.shutdown()
    first.stop()
    again = spawn_keyholder(CFG, registry, state_dir=state)
    relay = KeyHolderClient(again.address)
    try:
        assert relay.verify_key == first.verify_key and relay.public_context == enc_context(enc, relay)
        with pytest.raises(CryptoError, match="already released"):
            relay.open_round(7, 10)
        with pytest.raises(CryptoError, match="already released"):
            relay.release(7)
    finally:
        relay.shutdown()
        again.stop()


def enc_context(enc: Encryptor, relay: KeyHolderClient) -> bytes:
    """The restarted key holder publishes the same context the clients pinned."""
    from privfl.fl.secure.payload import context_fingerprint

    assert context_fingerprint(relay.public_context) == enc.fingerprint
    return relay.public_context


# --- attack 4: calibration buckets in an honest run ---------------------------------------------------
def test_attack4_no_bucket_copies_the_key_holder_sees_only_the_sum():
    """A tiny client among large ones: every slot the key holder can decrypt is a slot of the sum.

    Run in-process on the shipped `KeyHolder` so the test can look at the key holder's own view
    (the decrypted slots of the round's ciphertext sum), which the socket never exposes."""
    params, needed = keyholder_settings(CFG)
    keys, registry = enrol_clients(CLIENTS)
    core = KeyHolder(params, registry, min_clients=needed)
    r, n = 0, 200
    ann_bytes, sig = core.open_round(r, n)
    ann = RoundAnnouncement.from_bytes(ann_bytes)
    assert len(ann.bounds) == 2 and ann.n_values == n + 1  # one vector bound, one weight bound, no copies
    enc = Encryptor(core.verify_key, core.public_context)
    rng = np.random.default_rng(4)
    vectors = {A: rng.normal(0, 1e-4, n), B: rng.normal(0, 100, n), C: rng.normal(0, 100, n)}
    weights = {A: 3.0, B: 200.0, C: 180.0}
    for cid in (A, B, C):
        payload, psig, _ = enc.seal(Contribution(cid, vectors[cid], weights[cid]), ann_bytes, sig, keys[cid])
        header, _ = _read_payload(payload, b"PFC1")
        assert header.n_values == n + 1 and header.bound_bits == ann.bounds
        assert core.submit(r, cid, payload, psig) is None
    # the key holder's whole view of the round: the decrypted slots of its running sum
    slots = np.concatenate([np.asarray(v.decrypt()) for v in core._rounds[r].total])
    capacity = 50 - 2 - 46
    expected = sum(
        pack_one(vectors[c], weights[c], ann.bounds, ann.max_clients, capacity)[0] for c in (A, B, C)
    )
    assert slots.shape == (n + 1,)
    np.testing.assert_allclose(slots, expected, atol=1e-6 * float(np.max(np.abs(expected))))
    released = core.release(r)
    total = vectors[A] + vectors[B] + vectors[C]
    assert float(np.max(np.abs(released.vector - total))) < 1e-6 * float(np.max(np.abs(total)))
    assert abs(released.weight - 383.0) < 1e-4  # the weight sum, not per-bucket counts
    # A's update is below the sum's error: nothing the key holder holds isolates it
    assert float(np.max(np.abs(released.vector - vectors[A]))) > 1e3 * float(np.max(np.abs(vectors[A])))


# --- attack 5: server-chosen bounds and contexts ------------------------------------------------------
def test_attack5_clients_refuse_bounds_or_contexts_the_key_holder_did_not_sign(party):
    rnd = Round(party, 6)
    ann = RoundAnnouncement.from_bytes(rnd.announcement)
    target = Contribution(A, rnd.updates[A][0], rnd.updates[A][1])
    for bounds in ((ann.bounds[0] - 12, ann.bounds[1]), (ann.bounds[0] + 1, ann.bounds[1] - 3)):
        finer = RoundAnnouncement(
            ann.run_id, ann.round_index, ann.n_params, ann.max_clients, bounds, ann.fingerprint
        )
        with pytest.raises(CryptoError, match="not signed by the pinned key holder"):
            rnd.encryptor.seal(target, finer.to_bytes(), rnd.signature, rnd.keys[A])
        server_key = SigningKey.generate()  # re-signed by the server: not the pinned key
        resigned = server_key.sign(signed_announcement_message(finer.to_bytes()))
        with pytest.raises(CryptoError, match="not signed by the pinned key holder"):
            rnd.encryptor.seal(target, finer.to_bytes(), resigned, rnd.keys[A])
    # the server's own key pair: it could decrypt, so the client must refuse its context
    own = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[50, 50])
    own.global_scale = 2.0**46
    public = own.serialize(save_secret_key=False)
    with pytest.raises(CryptoError, match="signed fingerprint"):
        Encryptor(party[0].verify_key, public).seal(target, rnd.announcement, rnd.signature, rnd.keys[A])
    # the open request carries no bounds; a server that adds some is ignored
    process, _, _, relay = party
    sock = relay._sock
    send_frame(
        sock, encode_frame({"op": "open", "round": 60, "n_params": N_PARAMS, "bounds": [-4, 6, 16, 26]})
    )
    fields, blobs = decode_frame(recv_frame(sock, 1 << 20))
    assert fields["ok"] and RoundAnnouncement.from_bytes(blobs["announcement"]).bounds == ann.bounds


# --- faults ------------------------------------------------------------------------------------------
def test_one_client_round_is_refused(party):
    rnd = Round(party, 8)
    assert rnd.relay.submit(rnd.r, A, *rnd.seal(A)) is None
    with pytest.raises(CryptoError, match="fewer than min_clients=3"):
        rnd.relay.release(rnd.r)


def test_malformed_and_oversized_payloads_are_refused_and_the_round_goes_on(party):
    rnd = Round(party, 9)
    ann = RoundAnnouncement.from_bytes(rnd.announcement)

    def signed_by(cid: int, payload: bytes) -> bytes:
        return rnd.keys[cid].sign(contribution_message(ann.run_id, rnd.r, cid, payload_digest(payload)))

    good, _ = rnd.seal(D)
    truncated = good[: len(good) // 2]
    assert "malformed" in rnd.relay.submit(rnd.r, D, truncated, signed_by(D, truncated))
    oversized = good + bytes(8 << 20)
    assert "exceeds" in rnd.relay.submit(rnd.r, D, oversized, signed_by(D, oversized))
    garbage = b"PFC1" + bytes(200)
    assert "malformed" in rnd.relay.submit(rnd.r, D, garbage, signed_by(D, garbage))
    for cid in (A, B, C):
        assert rnd.relay.submit(rnd.r, cid, *rnd.seal(cid)) is None
    assert_is_sum(rnd.relay.release(rnd.r), rnd, (A, B, C))


def test_a_huge_update_is_clamped_on_the_client_and_the_round_is_released(party):
    rnd = Round(party, 10)
    ann = RoundAnnouncement.from_bytes(rnd.announcement)
    limit = math.ldexp(1.0, ann.bounds[0] - 1) / ann.max_clients
    huge = rnd.updates[D][0].copy()
    huge[0] = 1e30
    payload, sig, clamped = rnd.encryptor.seal(
        Contribution(D, huge, rnd.updates[D][1]), rnd.announcement, rnd.signature, rnd.keys[D]
    )
    assert clamped
    assert rnd.relay.submit(rnd.r, D, payload, sig) is None
    for cid in (A, B, C):
        assert rnd.relay.submit(rnd.r, cid, *rnd.seal(cid)) is None
    released = rnd.relay.release(rnd.r)
    vector, _ = rnd.plain_sum((A, B, C))
    assert abs(released.vector[0] - (vector[0] + limit)) < 1e-6 * limit
    with pytest.raises(CryptoError, match="non-finite"):
        rnd.seal(A, vector=np.full(N_PARAMS, np.nan))
