"""CkksSummation against a key holder run apart (served in a thread): the client and relay halves,
their refusals, the round's stats and the bounds a resumed run starts from."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from privfl.config import ExperimentConfig
from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution, RoundKeys, Upload
from privfl.fl.client import Update
from privfl.fl.secure import KeyHolder, enrol_clients
from privfl.fl.secure.service import keyholder_settings, serve
from privfl.fl.secure.summation import CkksSummation

N = 6
CLIENTS = [0, 1, 2]


def weighted(update: Update) -> Contribution:
    return Contribution(
        update.client_id, update.delta.astype(np.float64) * 2.0, 2.0, clipped=update.client_id == 1
    )


def config(**secure) -> ExperimentConfig:
    overrides = {"secure.scheme": "ckks", "train.clients": len(CLIENTS), "secure.min_clients": 2}
    return (
        ExperimentConfig().override({**overrides, **{f"secure.{k}": v for k, v in secure.items()}}).validate()
    )


@pytest.fixture(scope="module")
def apart():
    """A key holder run apart: its own process in deployment, a thread here; its clients' keys."""
    keys, registry = enrol_clients(CLIENTS)
    params, min_clients = keyholder_settings(config())
    holder = KeyHolder(params, registry, min_clients=min_clients)
    ready, lines = threading.Event(), []
    thread = threading.Thread(
        target=serve,
        args=(holder, "127.0.0.1", 0),
        kwargs={"announce": lambda line: (lines.append(line), ready.set())},
        daemon=True,
    )
    thread.start()
    assert ready.wait(30)
    address = lines[0].split()[4]
    yield holder, keys, address
    from privfl.fl.secure.service import KeyHolderClient

    KeyHolderClient(address).shutdown()
    thread.join(30)


@pytest.fixture()
def opened(apart):
    """Summations a test opens; each is closed after it, as the key holder serves one relay at a time."""
    made: list[CkksSummation] = []
    yield made
    for s in made:
        s.close()


def summation(apart, opened, cfg: ExperimentConfig | None = None, **kwargs) -> CkksSummation:
    holder, keys, address = apart
    s = CkksSummation(cfg or config(keyholder=address, keyholder_key=holder.verify_key.hex()), **kwargs)
    opened.append(s)
    for cid in CLIENTS:
        s.enrol(cid, keys[cid])
    return s


def update(cid: int, r: int) -> Update:
    return Update(cid, r, np.full(N, cid + 1.0, dtype=np.float32), 10, 0.5)


def test_a_round_through_a_key_holder_run_apart_sums_and_reports(apart, opened):
    s = summation(apart, opened, debug_check=True)
    keys = s.begin_round(1, N)
    assert (keys.round_index, keys.n_params, keys.keyholder_key) == (1, N, apart[0].verify_key)
    assert keys.public_context == apart[0].public_context and len(keys.bound_bits) == 2
    sizes, uploads = [], []
    for cid in CLIENTS:
        t0, c0 = time.perf_counter(), time.process_time()
        upload = s.encode(update(cid, 1), weighted, keys)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert upload.delta is None and upload.num_samples == 10 and upload.clipped == (cid == 1)
        assert 0 < upload.encode_s <= wall and 0 < upload.encode_cpu_s <= cpu  # this call's own time
        sizes.append(len(upload.ciphertext) + len(upload.signature))
        uploads.append(upload)
        s.submit(upload, weighted)
    result = s.finish()
    np.testing.assert_allclose(result.vector, np.full(N, 2.0 * (1 + 2 + 3)), rtol=1e-5)
    assert result.weight == pytest.approx(6.0, rel=1e-5) and result.count == 3 and result.clipped == 1
    stats = result.stats
    assert stats["rejected"] == 0 and stats["bytes_per_client"] == pytest.approx(sum(sizes) / 3)
    assert stats["he_bound_bits"] == list(keys.bound_bits)
    assert stats["aggregate_s"] > 0 and stats["decrypt_s"] > 0
    assert stats["encrypt_s"] == pytest.approx(sum(u.encode_s for u in uploads))  # the clients' total
    assert stats["encrypt_cpu_s"] == pytest.approx(sum(u.encode_cpu_s for u in uploads))
    assert stats["max_abs_error"] < 1e-4 and stats["max_rel_error"] == pytest.approx(
        stats["max_abs_error"] / 12.0
    )
    assert stats["weight_abs_error"] < 1e-4
    assert s.state() == {"bound_bits": list(_bounds_of(apart[0], 2))}  # what round 2 is announced with
    s.close()
    s.close()  # closing twice is harmless


def _bounds_of(holder: KeyHolder, r: int) -> tuple[int, int]:
    from privfl.fl.secure import RoundAnnouncement

    return RoundAnnouncement.from_bytes(holder.open_round(r, N)[0]).bounds


def test_client_faults_and_refused_payloads_are_counted_and_the_round_goes_on(apart, opened, caplog):
    s = summation(apart, opened, debug_check=True)
    keys = s.begin_round(3, N)
    bad = Update(0, 3, np.array([np.nan] * N, dtype=np.float32), 10, 0.5)
    sent_nothing = s.encode(bad, weighted, keys)
    assert sent_nothing.ciphertext == b"" and sent_nothing.signature == b""
    assert "client 0 sends nothing" in caplog.text
    s.submit(sent_nothing, weighted)
    good = [s.encode(update(cid, 3), weighted, keys) for cid in (1, 2)]
    forged = Upload(2, 3, 10, ciphertext=good[1].ciphertext, signature=good[0].signature)  # 1's signature
    s.submit(forged, weighted)
    assert "the key holder refused client 2" in caplog.text
    for u in good:
        s.submit(u, weighted)
    result = s.finish()
    assert result.count == 2 and result.stats["rejected"] == 2 and result.clipped == 1
    np.testing.assert_allclose(result.vector, np.full(N, 2.0 * (2 + 3)), rtol=1e-5)
    assert result.stats["max_abs_error"] < 1e-4  # against the two released clients only


def test_the_relay_refuses_misuse_by_name(apart, opened):
    s = summation(apart, opened)
    for call in (lambda: s.submit(Upload(0, 0, 1, ciphertext=b"x"), weighted), s.finish, lambda: s.add(None)):
        with pytest.raises(
            RuntimeError, match=r"^begin_round\(\) must be called before (submit|finish|add)\(\)$"
        ):
            call()
    keys = s.begin_round(4, N)
    with pytest.raises(
        CryptoError,
        match=r"^client 0 sent its update in the clear to an encrypted summation; server and clients must "
        r"run the same secure\.scheme$",
    ):
        s.submit(Upload(0, 4, 10, delta=np.zeros(N)), weighted)
    with pytest.raises(
        CryptoError, match=r"^the key holder is already running; register clients before the first round$"
    ):
        s.register({0: b"k" * 32})
    with pytest.raises(
        CryptoError,
        match=r"^round 4: no public CKKS context or key-holder announcement came with the round; server and "
        r"clients must run the same secure\.scheme$",
    ):
        s.encode(update(0, 4), weighted, RoundKeys(4, N))
    stranger = Update(7, 4, np.ones(N, dtype=np.float32), 10, 0.5)
    with pytest.raises(
        CryptoError,
        match=r"^client 7 has no enrolled signing key in this process: create one with "
        r"`privfl keyholder enrol` and give its path as the node's signing-key$",
    ):
        s.encode(stranger, lambda u: Contribution(7, np.ones(N), 1.0), keys)
    s.close()


def test_a_client_pins_the_key_holder_it_was_told_about(apart, opened, caplog):
    holder, keys, address = apart
    relay = summation(apart, opened)
    round_keys = relay.begin_round(5, N)
    relay.close()  # the key holder serves one relay at a time
    unpinned = summation(apart, opened, config(keyholder=address))
    with caplog.at_level("WARNING"):
        assert unpinned.encode(update(0, 5), weighted, round_keys).ciphertext == b""  # sends nothing
    assert (
        f"client 0 sends nothing: secure.keyholder = '{address}' is run apart, but this client pinned no "
        "key for it: set secure.keyholder_key, or start the SuperNode with --node-config" in caplog.text
    )
    unpinned.enrol(0, keys[0], keyholder_key=holder.verify_key)  # its node's own copy of the key
    assert unpinned.encode(update(0, 5), weighted, round_keys).ciphertext
    other = enrol_clients([0])[0][0].public_bytes()
    wrong = summation(apart, opened, config(keyholder=address, keyholder_key=other.hex()))
    with pytest.raises(
        CryptoError,
        match=rf"^the key holder at {address} has key {holder.verify_key.hex()}, not the pinned "
        rf"secure\.keyholder_key {other.hex()}$",
    ):
        wrong.begin_round(5, N)


def test_a_relay_given_no_key_to_pass_on_leaves_the_client_nothing_to_check(caplog):
    s = CkksSummation(config())
    s.enrol(0, enrol_clients([0])[0][0])
    keys = RoundKeys(0, N, b"ctx", (10, 20), announcement=b"a", signature=b"s", keyholder_key=None)
    with caplog.at_level("WARNING"):
        assert s.encode(update(0, 0), weighted, keys).ciphertext == b""
    assert (
        "client 0 sends nothing: no key-holder key to check the round's announcement against" in caplog.text
    )


def test_the_next_rounds_bounds_survive_a_resume():
    s = CkksSummation(config())
    assert s.state() == {"bound_bits": None}
    s.load_state({"bound_bits": [12, -3]})
    assert s.state() == {"bound_bits": [12, -3]}
    for ignored in ({}, {"bound_bits": None}, {"bound_bits": [1, 2, 3]}, {"bound_bits": "12,3"}):
        s.load_state(ignored)
        assert s.state() == {"bound_bits": [12, -3]}


def test_both_halves_in_one_process_release_the_weighted_sum_of_what_was_added(apart, opened):
    """`add` (canary clients, DP wrappers): seal and relay in one call; the key holder's sum is the
    plaintext sum of the weighted vectors, with their weights, count, clipped flags and stats."""
    s = summation(apart, opened, debug_check=True)
    s.begin_round(10, N)
    added = [
        Contribution(0, np.linspace(-1.0, 1.0, N) * 3.0, 3.0),
        Contribution(1, np.arange(N, dtype=np.float64) * 0.5, 0.5, clipped=True),
        Contribution(2, np.full(N, -2.0), 1.0, clipped=True),
    ]
    for c in added:
        s.add(c)
    result = s.finish()
    np.testing.assert_allclose(result.vector, sum(c.vector for c in added), atol=1e-4)
    assert result.weight == pytest.approx(4.5, rel=1e-5) and result.count == 3 and result.clipped == 2
    stats = result.stats
    assert stats["rejected"] == 0 and stats["bytes_per_client"] > 0
    assert stats["encrypt_s"] > 0 and stats["encrypt_cpu_s"] > 0 and stats["aggregate_s"] > 0
    # the values are off the packing grid, so the check measures a small error, not none at all
    assert 0 < stats["max_abs_error"] < 1e-4 and stats["weight_abs_error"] < 1e-4
    peak = np.max(np.abs(sum(c.vector for c in added)))  # 5.0
    assert stats["max_rel_error"] == pytest.approx(stats["max_abs_error"] / peak)


def test_a_client_fault_through_add_is_counted_and_the_round_released_without_it(apart, opened, caplog):
    s = summation(apart, opened, debug_check=True)
    s.begin_round(11, N)
    with caplog.at_level("WARNING"):
        s.add(Contribution(0, np.full(N, np.inf), 1.0))  # cannot be sealed: sends nothing
    assert any(m.startswith("round 11: client 0 sends nothing: ") for m in caplog.messages)
    s.add(Contribution(1, np.full(N, 1.5), 1.0))
    s.add(Contribution(2, np.full(N, 2.5), 2.0, clipped=True))
    with pytest.raises(CryptoError, match=r"^client 7 has no enrolled signing key in this process"):
        s.add(Contribution(7, np.ones(N), 1.0))
    result = s.finish()
    assert result.count == 2 and result.stats["rejected"] == 1 and result.clipped == 1
    np.testing.assert_allclose(result.vector, np.full(N, 4.0), atol=1e-4)
    assert result.weight == pytest.approx(3.0, rel=1e-5) and result.stats["max_abs_error"] < 1e-4


def test_the_aggregate_time_covers_every_relayed_payload_of_the_round(apart, opened):
    s = summation(apart, opened)
    s.begin_round(12, N)
    forward, pause = s._conn.submit, 0.05

    def slow(*args):  # a key holder that takes `pause` per payload
        time.sleep(pause)
        return forward(*args)

    s._conn.submit = slow
    for cid in CLIENTS:
        s.add(Contribution(cid, np.ones(N), 1.0))
    assert s.finish().stats["aggregate_s"] >= len(CLIENTS) * pause


def test_the_built_in_engine_spawns_its_key_holder_enrols_every_client_and_stops_it():
    """secure.keyholder = "": the summation starts its own key holder (at the resumed bounds),
    enrols the simulated clients with it, pins the key the child printed, and stops it on close."""
    s = CkksSummation(config(), debug_check=True)
    s.load_state({"bound_bits": [14, 3]})  # a resumed run
    keys = s.begin_round(0, N)
    child = s._process.process
    assert child.poll() is None and keys.keyholder_key == s._process.verify_key == s._pin
    assert keys.bound_bits == (14, 3)
    for cid in CLIENTS:
        s.add(Contribution(cid, np.full(N, cid + 1.0), 1.0))
    result = s.finish()
    np.testing.assert_allclose(result.vector, np.full(N, 6.0), atol=1e-4)
    assert result.count == 3 and result.stats["rejected"] == 0
    s.begin_round(1, N)
    assert s._process.process is child  # one key holder for the whole run
    s.close()
    assert child.wait(30) is not None and s._process is None and s._conn is None
    s.close()  # closing twice is harmless


def test_a_spawned_key_holder_knows_only_the_registered_clients():
    """Flower's server side: the roll call's keys go to the key holder it spawns; the clients sign
    with their own keys, and one outside the registry is refused."""
    keys, registry = enrol_clients(CLIENTS)
    s = CkksSummation(config())
    s.register({cid: registry[cid] for cid in (0, 1)})
    for cid in CLIENTS:
        s.enrol(cid, keys[cid])
    try:
        round_keys = s.begin_round(0, N)
        assert s._pin is None  # the relay forwards the child's key; nobody pinned one
        for cid in CLIENTS:
            s.submit(s.encode(update(cid, 0), weighted, round_keys), weighted)
        result = s.finish()
    finally:
        s.close()
    assert result.count == 2 and result.stats["rejected"] == 1
    np.testing.assert_allclose(result.vector, np.full(N, 2.0 * (1 + 2)), rtol=1e-5)


def test_a_client_that_re_pins_checks_the_next_round_against_the_new_key(apart, opened, caplog):
    holder, keys, address = apart
    relay = summation(apart, opened)
    round_keys = relay.begin_round(13, N)
    relay.close()
    other = enrol_clients([0])[0][0].public_bytes()  # a key that did not sign the round
    client = summation(apart, opened, config(keyholder=address, keyholder_key=other.hex()))
    with caplog.at_level("WARNING"):
        assert client.encode(update(0, 13), weighted, round_keys).ciphertext == b""
    assert "client 0 sends nothing" in caplog.text
    client.enrol(0, keys[0], keyholder_key=holder.verify_key)  # its node's corrected copy
    assert client.encode(update(0, 13), weighted, round_keys).ciphertext


def test_a_key_holder_that_keeps_its_key_but_renews_its_context_gets_payloads_for_the_new_one(tmp_path):
    """The client's cached encryptor is for one (key, context) pair: a new context under the same
    pinned key (a key holder restarted with its signing key and a fresh context) gets a new one."""
    keys, registry = enrol_clients(CLIENTS)
    params, min_clients = keyholder_settings(config())
    first = KeyHolder(params, registry, min_clients=min_clients, state_dir=tmp_path / "a")
    renewed_dir = tmp_path / "b"
    KeyHolder(params, registry, min_clients=min_clients, state_dir=renewed_dir)
    (renewed_dir / "signing-key.bin").write_bytes((tmp_path / "a" / "signing-key.bin").read_bytes())
    renewed = KeyHolder(params, registry, min_clients=min_clients, state_dir=renewed_dir)
    assert renewed.verify_key == first.verify_key and renewed.public_context != first.public_context
    client = CkksSummation(config(keyholder="127.0.0.1:1", keyholder_key=first.verify_key.hex()))
    client.enrol(0, keys[0])
    for holder in (first, renewed):
        announcement, signature = holder.open_round(0, N)
        round_keys = RoundKeys(
            0, N, holder.public_context, (0, 0), announcement=announcement, signature=signature
        )
        upload = client.encode(update(0, 0), weighted, round_keys)
        assert holder.submit(0, 0, upload.ciphertext, upload.signature) is None


def test_the_debug_check_of_an_all_zero_sum_reports_its_absolute_error():
    """With nothing to divide by, the relative error is the absolute one (not a division by 0)."""
    s = CkksSummation(config(), debug_check=True)
    try:
        s.begin_round(0, N)
        for cid in CLIENTS:
            s.add(Contribution(cid, np.zeros(N), 1.0))
        stats = s.finish().stats
    finally:
        s.close()
    assert stats["max_rel_error"] == stats["max_abs_error"] < 1e-4
