"""`SecAggPlusSummation` as a `Summation`: what encode uploads, what submit books, finish's sums and
stats (bytes, seconds, clipping, aborts), its two halves in different objects, and its refusals.

Seconds are read from a stand-in clock that moves only where the test says (the contribution rule
and a client's answer are the clients' work, the relay's own step the server's), so the stats are
checked exactly, never by timing anything."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from privfl.config import ExperimentConfig
from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution, RoundKeys, Upload
from privfl.fl.client import Update
from privfl.fl.secure import secaggplus_summation as ssum
from privfl.fl.secure.masking import FixedPoint
from privfl.fl.secure.secaggplus import RoundAborted
from privfl.fl.secure.secaggplus_summation import (
    SecAggParams,
    SecAggPlusSummation,
    decode_keys,
    encode_keys,
    message_bytes,
    with_dropouts,
)

N = 6  # model parameters


def params(
    k: int = 3, *, bits: int = 62, value_range: float = 100.0, clip_values: bool = True
) -> SecAggParams:
    return SecAggParams(FixedPoint(bits, value_range, k), 0.5, None, 0.2, clip_values=clip_values)


def on_grid(fx: FixedPoint, seed: int, k: int) -> list[np.ndarray]:
    """k vectors of exact multiples of the step, odd and as large as 2^40 steps, negative too: their
    sums are exact in fixed point and in float64, so a sum is checked for equality; and an encoded
    negative value (near 2^bits) keeps bits that a float64 detour would round away."""
    rng = np.random.default_rng(seed)
    return [(2 * rng.integers(-(2**39), 2**39, size=N) + 1) * fx.step for _ in range(k)]


def uploads_and_sum(s: SecAggPlusSummation, vectors: list[np.ndarray], round_index: int = 4) -> list[Upload]:
    keys = s.begin_round(round_index, N)
    ups = [
        s.encode(Update(c, round_index, v.astype(np.float32), 10 + c, 0.0), rule(v, 1.0), keys)
        for c, v in enumerate(vectors)
    ]
    for u in ups:
        s.submit(u, lambda _: pytest.fail("SecAgg+ submit applies no contribution rule"))
    return ups


def rule(vector: np.ndarray, weight: float, clipped: bool = False):
    """A contribution rule that uses the update it is given (its id) and returns the given vector."""
    return lambda update: Contribution(update.client_id, vector, weight, clipped)


# --- key advertisements and message sizes ----------------------------------------------------------
def test_key_advertisements_round_trip_and_a_truncated_one_is_refused_by_its_length() -> None:
    pk1, pk2 = b"\x01" * 65, b"\x02" * 33
    data = encode_keys(pk1, pk2)
    assert data[:4] == (65).to_bytes(4, "little") and decode_keys(data) == (pk1, pk2)
    assert decode_keys(data[: 4 + 65]) == (pk1, b"")  # exactly pk1: whole, with an empty pk2
    with pytest.raises(CryptoError, match=r"^a SecAgg\+ key advertisement of 68 bytes is truncated$"):
        decode_keys(data[: 4 + 64])
    with pytest.raises(CryptoError, match="of 10 bytes is truncated"):
        decode_keys(data[:10])


def test_message_bytes_counts_arrays_bytes_and_8_per_id_key_and_scalar() -> None:
    assert message_bytes(b"abcde") == 5
    assert message_bytes(np.zeros(3, np.uint64)) == 24 and message_bytes(np.zeros(3, np.uint32)) == 12
    assert message_bytes(7) == 8 and message_bytes(None) == 8 and message_bytes(2.5) == 8
    # a dict: 8 per key and its value's bytes
    assert message_bytes({1: b"abc", 2: np.zeros(2, np.uint64)}) == (8 + 3) + (8 + 16)
    # a list or tuple: ints and strings 8 each, everything else by its own size
    assert message_bytes([1, "seed", b"ab", np.zeros(2, np.uint32)]) == 8 + 8 + 2 + 8
    # a share-keys request: the neighbours' key pairs and t
    request = ({0: (b"k" * 10, b"k" * 20), 3: (b"k" * 10, b"k" * 20)}, 2)
    assert message_bytes(request) == 2 * (8 + 30) + 8
    # an unmask reply: {neighbour: (kind, share)}
    assert message_bytes({5: ("seed", b"s" * 40)}) == 8 + 8 + 40


# --- parameters from the config --------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "clip"), [("user-dp", False), ("fedavg", True), ("dp", True)])
def test_params_take_threshold_ring_dropout_and_clipping_from_the_config(mode, clip) -> None:
    cfg = ExperimentConfig().override(
        {
            "secure.scheme": "secaggplus",
            "train.clients": 10,
            "train.mode": mode,
            "secure.threshold": 0.7,
            "secure.neighbours": 5,
            "secure.max_dropout": 0.1,
            "secure.modulus_bits": 48,
            "secure.value_range": 20.0,
        }
    )
    p = SecAggParams.from_config(cfg)
    assert (p.threshold, p.neighbours, p.max_dropout, p.clip_values) == (0.7, 5, 0.1, clip)
    assert (p.fixed.bits, p.fixed.value_range, p.fixed.max_clients) == (48, 20.0, 10)


# --- the client half -------------------------------------------------------------------------------
def test_encode_uploads_only_fresh_public_keys_for_the_round_and_keeps_the_input() -> None:
    s = SecAggPlusSummation(params())
    keys = RoundKeys(9, N)
    seen = []

    def contribution(update):
        seen.append(update)
        return Contribution(update.client_id, np.arange(N, dtype=np.float32) / 4, 3.5, clipped=True)

    update = Update(2, 9, np.ones(N, np.float32), 17, 0.1)
    up = s.encode(update, contribution, keys)
    assert seen == [update]  # the policy's rule saw the client's update
    assert (up.client_id, up.round_index, up.num_samples, up.clipped, up.delta) == (2, 9, 17, True, None)
    party, encoded = s.held(2)
    assert decode_keys(up.ciphertext) == (party.pk1, party.pk2) and party.client_id == 2
    # the vector (in float64), then the weight, then the count of clipped coordinates: uint64 in Z_M
    fx = s.params.fixed
    assert encoded.dtype == np.uint64 and encoded.shape == (N + 2,)
    np.testing.assert_array_equal(fx.decode(encoded[: N + 1]), [*np.arange(N) / 4, 3.5])
    assert encoded[-1] == 0
    assert s.held(3) is None
    other = s.encode(update, contribution, keys)  # fresh keys every time
    assert decode_keys(other.ciphertext) != decode_keys(up.ciphertext)


def test_encode_clips_to_the_range_and_counts_it_but_wraps_under_user_dp() -> None:
    vector = np.array([1.0, 9.0, -9.0, 0.5, 20.0, 0.0])
    s = SecAggPlusSummation(params(2, bits=24, value_range=4.0))
    keys = s.begin_round(1, N)
    s.encode(Update(0, 1, vector, 1, 0.0), rule(vector, 1.0), keys)
    _, encoded = s.held(0)
    fx = s.params.fixed
    np.testing.assert_array_equal(fx.decode(encoded[:N]), [1.0, 4.0, -4.0, 0.5, 4.0, 0.0])
    assert encoded[-1] == 3  # three coordinates clipped, a count summed inside the mask
    wrap = SecAggPlusSummation(params(2, bits=24, value_range=4.0, clip_values=False))
    wrap.encode(Update(0, 1, vector, 1, 0.0), rule(vector, 1.0), wrap.begin_round(1, N))
    _, encoded = wrap.held(0)
    # f = 19: M = 2^24 is 32 in decoded units, read as [-16, 16): 9 stays 9, 20 wraps to 20 - 32
    np.testing.assert_array_equal(fx.decode(encoded[:N]), [1.0, 9.0, -9.0, 0.5, 20.0 - 32.0, 0.0])
    assert encoded[-1] == 0


def test_wrapped_values_still_sum_exactly_under_user_dp_and_no_clipping_is_reported() -> None:
    s = SecAggPlusSummation(params(2, bits=24, value_range=4.0, clip_values=False))
    a, b = np.array([20.0, 1, 2, 3, 4, 5]), np.array([-19.0, 0, 0, 0, -4, -6])
    uploads_and_sum(s, [a, b])
    result = s.finish()
    np.testing.assert_array_equal(result.vector, a + b)  # 20 wrapped (to -12), the sum exact mod M
    assert result.weight == 2.0
    assert "clipped_values" not in result.stats


def test_respond_refuses_a_client_it_holds_nothing_for_and_an_unknown_stage() -> None:
    s = SecAggPlusSummation(params())
    with pytest.raises(CryptoError, match=r"^round 3: client 7 holds no SecAgg\+ state for this round$"):
        s.respond(3, "share_keys", 7, None)
    s.encode(Update(7, 3, np.zeros(N), 1, 0.0), rule(np.zeros(N), 1.0), RoundKeys(3, N))
    with pytest.raises(CryptoError, match=r"^round 3: unknown SecAgg\+ stage 'unmask_all'; expected one of"):
        s.respond(3, "unmask_all", 7, None)
    with pytest.raises(CryptoError, match=r"\('share_keys', 'masked_input', 'unmask'\)"):
        s.respond(3, "unmask_all", 7, None)


def test_a_client_that_refuses_a_stage_is_dropped_and_the_reason_logged(caplog) -> None:
    s = SecAggPlusSummation(params(3))
    s.begin_round(5, N)
    for c in range(3):
        s.add(Contribution(c, np.full(N, c + 1.0), 1.0))
    caplog.set_level(logging.WARNING, logger=ssum.__name__)
    replies = s.respond_all(5, "share_keys", {0: ({}, 2), 8: ({}, 2)})
    assert replies == {}
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("round 5: client 0 left SecAgg+ at share_keys: client 0: the server listed")
    assert messages[1] == (
        "round 5: client 8 left SecAgg+ at share_keys: "
        "round 5: client 8 holds no SecAgg+ state for this round"
    )


# --- the server half: sums ------------------------------------------------------------------------
def test_default_relay_sums_exactly_on_the_grid_with_weights_and_clipped_contributions() -> None:
    s = SecAggPlusSummation(params(3))  # the built-in engine's relay, no debug check
    vs = on_grid(s.params.fixed, 0, 3)
    keys = s.begin_round(2, N)
    ups = [
        s.encode(Update(c, 2, v, 1, 0.0), rule(v, 0.25 * (c + 1), clipped=c != 1), keys)
        for c, v in enumerate(vs)
    ]
    for u in ups:
        s.submit(u, None)
    result = s.finish()
    np.testing.assert_array_equal(result.vector, vs[0] + vs[1] + vs[2])
    assert result.vector.shape == (N,) and (result.weight, result.count, result.clipped) == (1.5, 3, 2)
    st = result.stats
    assert (st["secagg_aborted"], st["secagg_clients"], st["secagg_survivors"], st["secagg_dropped"]) == (
        0,
        3,
        3,
        0,
    )
    assert st["quant_step"] == s.params.fixed.step and st["quant_error_bound"] == 1.5 * s.params.fixed.step
    assert st["clipped_values"] == 0 and "max_abs_error" not in st  # debug_check is off by default
    assert s.held(0) is None  # the clients' round secrets are gone with the round


def test_clipped_coordinates_and_contributions_are_counted_per_round() -> None:
    s = SecAggPlusSummation(params(3, value_range=2.0))
    big = np.array([3.0, -5.0, 0.0, 0.0, 2.0, 1.0])
    uploads_and_sum(s, [big, big, np.zeros(N)])
    first = s.finish()
    assert first.stats["clipped_values"] == 4 and first.clipped == 0
    np.testing.assert_array_equal(first.vector, [4.0, -4.0, 0, 0, 4.0, 2.0])
    keys = s.begin_round(5, N)
    for c in range(3):
        s.submit(s.encode(Update(c, 5, big, 1, 0.0), rule(np.zeros(N), 1.0, clipped=c > 0), keys), None)
    second = s.finish()  # counts start again each round
    assert second.stats["clipped_values"] == 0 and second.clipped == 2


def test_add_encodes_and_submits_one_contribution_in_process() -> None:
    s = SecAggPlusSummation(params(2), debug_check=True)
    vs = on_grid(s.params.fixed, 1, 2)
    s.begin_round(1, N)
    s.add(Contribution(4, vs[0], 2.0, clipped=True))
    s.add(Contribution(9, vs[1], 0.5))
    party, _ = s.held(9)
    assert party.client_id == 9
    result = s.finish()
    np.testing.assert_array_equal(result.vector, vs[0] + vs[1])
    assert (result.weight, result.count, result.clipped) == (2.5, 2, 1)
    assert result.stats["max_abs_error"] == 0.0


def test_the_relay_is_given_the_round_and_each_stage_and_the_bytes_are_what_it_carried() -> None:
    carried = []
    s = SecAggPlusSummation(params(3))

    def relay(round_index, stage, requests):
        replies = s.respond_all(round_index, stage, requests)
        carried.append((round_index, stage, sorted(requests), requests, replies))
        return replies

    s.use_relay(relay)
    ups = uploads_and_sum(s, on_grid(s.params.fixed, 2, 3), round_index=6)
    result = s.finish()
    assert [(r, stage, ids) for r, stage, ids, _, _ in carried] == [
        (6, "share_keys", [0, 1, 2]),
        (6, "masked_input", [0, 1, 2]),
        (6, "unmask", [0, 1, 2]),
    ]
    up = sum(len(u.ciphertext) for u in ups) + sum(
        message_bytes(m) for *_, rep in carried for m in rep.values()
    )
    down = sum(message_bytes(m) for *_, req, _ in carried for m in req.values())
    assert (
        result.stats["bytes_per_client"] == up / 3 and result.stats["download_bytes_per_client"] == down / 3
    )
    assert result.stats["bytes_per_client"] > 8 * (N + 2) and result.count == 3
    # the next round counts afresh
    carried.clear()
    ups = uploads_and_sum(s, on_grid(s.params.fixed, 3, 3), round_index=7)
    again = s.finish()
    up = sum(len(u.ciphertext) for u in ups) + sum(
        message_bytes(m) for *_, rep in carried for m in rep.values()
    )
    assert again.stats["bytes_per_client"] == up / 3


def test_a_server_and_clients_in_different_objects_sum_as_one(monkeypatch) -> None:
    """The Flower engine's shape: clients encode in their own objects and answer the stages there
    (a client's state restored with hold), the server only submits and finishes."""
    p = params(3)
    clients = SecAggPlusSummation(p)
    vs = on_grid(p.fixed, 4, 3)
    keys = RoundKeys(8, N)  # as the server's begin_round sends it
    ups = [clients.encode(Update(c, 8, v, 1, 0.0), rule(v, 1.0), keys) for c, v in enumerate(vs)]
    nodes = {c: SecAggPlusSummation(p) for c in range(3)}  # one object per node, its state restored
    for c in range(3):
        nodes[c].hold(c, *clients.held(c))
    server = SecAggPlusSummation(
        p,
        debug_check=True,
        relay=lambda r, stage, requests: {
            c: reply for c in requests for reply in nodes[c].respond_all(r, stage, {c: requests[c]}).values()
        },
    )
    assert server.begin_round(8, N) == keys
    for u in ups:
        server.submit(u, None)
    result = server.finish()
    np.testing.assert_array_equal(result.vector, sum(vs))
    # the server holds no client's plaintext, so its debug check has nothing to compare
    assert result.count == 3 and "max_abs_error" not in result.stats


def test_seconds_are_booked_to_the_clients_and_the_server_exactly(monkeypatch) -> None:
    clock = SimpleNamespace(wall=1000.0, cpu=500.0)

    def advance(wall, cpu):
        clock.wall += wall
        clock.cpu += cpu

    fake = SimpleNamespace(perf_counter=lambda: clock.wall, process_time=lambda: clock.cpu)
    monkeypatch.setattr(ssum, "time", fake)
    s = SecAggPlusSummation(params(3))
    answer = s.respond

    def respond(*args):  # a client's work: 0.5 s, 0.25 s of CPU
        advance(0.5, 0.25)
        return answer(*args)

    def relay(round_index, stage, requests):  # the server's own work: 0.125 s per stage
        advance(0.125, 0.0)
        return s.respond_all(round_index, stage, requests)

    s.respond = respond
    s.relay = relay
    for round_index in (1, 2):  # the second round starts from zero again
        keys = s.begin_round(round_index, N)
        for c in range(3):

            def contribution(update, c=c):  # local encoding: 2 s, 1 s of CPU
                advance(2.0, 1.0)
                return Contribution(update.client_id, np.full(N, float(c)), 1.0)

            up = s.encode(Update(c, round_index, np.zeros(N), 1, 0.0), contribution, keys)
            assert (up.encode_s, up.encode_cpu_s) == (2.0, 1.0)
            s.submit(up, None)
        st = s.finish().stats
        # 3 encodings and 3 stages x 3 answers on the clients, 3 relay steps on the server
        assert (st["encode_s"], st["encode_cpu_s"]) == (3 * 2.0 + 9 * 0.5, 3 * 1.0 + 9 * 0.25)
        assert st["aggregate_s"] == 3 * 0.125


def test_a_client_object_answers_before_any_round_of_its_own() -> None:
    node = SecAggPlusSummation(params(3))  # a client node's object: no begin_round
    node.encode(Update(0, 1, np.zeros(N), 1, 0.0), rule(np.zeros(N), 1.0), RoundKeys(1, N))
    assert node.respond_all(1, "share_keys", {0: ({}, 2)}) == {}  # refused: dropped, not raised


# --- aborts and misuse ---------------------------------------------------------------------------
def test_an_aborted_round_is_skipped_by_default_with_zero_sums_and_the_reason_logged(caplog) -> None:
    s = SecAggPlusSummation(params(4), debug_check=True)
    s.relay = with_dropouts(s.respond_all, {"masked_input": {0, 1}})
    uploads_and_sum(s, [np.ones(N)] * 4, round_index=3)
    caplog.set_level(logging.WARNING, logger=ssum.__name__)
    result = s.finish()
    np.testing.assert_array_equal(result.vector, np.zeros(N))
    assert (result.weight, result.count) == (0.0, 0)
    assert result.stats == {"secagg_aborted": 1, "secagg_clients": 4, "secagg_survivors": 0}
    (record,) = [r for r in caplog.records if "aborted" in r.getMessage()]
    assert record.getMessage().startswith(
        "round 3: SecAgg+ aborted, the round is skipped: round 3, masked input: client"
    )
    assert s.held(0) is None  # the round's secrets are dropped with it


def test_stop_on_abort_names_the_reason_and_the_setting() -> None:
    s = SecAggPlusSummation(params(4), on_abort="stop")
    s.relay = with_dropouts(s.respond_all, {"masked_input": {0, 1}})
    uploads_and_sum(s, [np.ones(N)] * 4, round_index=3)
    with pytest.raises(
        RoundAborted, match=r"^round 3, masked input: .*; secure.on_abort = 'stop' ends the run"
    ):
        s.finish()


def test_calls_out_of_order_and_a_clear_upload_are_refused() -> None:
    s = SecAggPlusSummation(params())
    up = Upload(1, 0, 1, ciphertext=encode_keys(b"a", b"b"))
    with pytest.raises(RuntimeError, match=r"^begin_round\(\) must be called before submit\(\)$"):
        s.submit(up, None)
    with pytest.raises(RuntimeError, match=r"^begin_round\(\) must be called before add\(\)$"):
        s.add(Contribution(1, np.zeros(N), 1.0))
    with pytest.raises(RuntimeError, match=r"^begin_round\(\) must be called before finish\(\)$"):
        s.finish()
    s.begin_round(0, N)
    with pytest.raises(
        CryptoError,
        match=r"^client 1 sent its update in the clear to a SecAgg\+ summation; "
        r"server and clients must run the same secure.scheme$",
    ):
        s.submit(Upload(1, 0, 1, delta=np.zeros(N)), None)
    s.submit(up, None)
    s.submit(Upload(2, 0, 1, ciphertext=encode_keys(b"c", b"d")), None)
    assert s.finish().stats["secagg_aborted"] == 1  # this object holds neither client: both drop
    with pytest.raises(RuntimeError, match=r"before finish\(\)"):
        s.finish()  # a round finishes once


def test_dropouts_relay_reports_each_dropped_client_it_was_asked_for() -> None:
    calls, dropped = [], []

    def inner(round_index, stage, requests):
        calls.append((round_index, stage, dict(requests)))
        return {c: f"reply {c}" for c in requests}

    relay = with_dropouts(inner, {"unmask": {1, 5}}, on_drop=lambda stage, cid: dropped.append((stage, cid)))
    assert relay(2, "unmask", {0: "a", 1: "b", 2: "c"}) == {0: "reply 0", 2: "reply 2"}
    assert relay(2, "share_keys", {1: "b"}) == {1: "reply 1"}
    assert calls == [(2, "unmask", {0: "a", 2: "c"}), (2, "share_keys", {1: "b"})]
    assert dropped == [("unmask", 1)]  # 5 was not asked, so it did not drop
    quiet = with_dropouts(inner, {"unmask": {1}})
    assert quiet(3, "unmask", {1: "b", 4: "d"}) == {4: "reply 4"}


def test_state_is_empty_because_every_round_starts_from_fresh_keys() -> None:
    s = SecAggPlusSummation(params())
    assert s.state() == {}
    s.load_state({"anything": 1})
    assert s.state() == {}


def test_each_client_is_sent_only_its_ring_neighbours_keys_under_secure_neighbours() -> None:
    asked = {}
    p = SecAggParams(FixedPoint(62, 100.0, 5), 0.5, 3, 0.2)  # a ring of 3 of 5 clients: t = 2
    s = SecAggPlusSummation(p)

    def relay(round_index, stage, requests):
        asked[stage] = requests
        return s.respond_all(round_index, stage, requests)

    s.use_relay(relay)
    vs = on_grid(p.fixed, 5, 5)
    uploads_and_sum(s, vs, round_index=2)
    result = s.finish()
    np.testing.assert_array_equal(result.vector, sum(vs))
    assert all(len(keys) == 3 and t == 2 for keys, t in asked["share_keys"].values())
    assert all(len(shares) == 2 for shares in asked["masked_input"].values())  # from its two neighbours
