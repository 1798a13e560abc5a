"""SecAgg+ in one process: fixed point, the four stages, dropouts, aborts, the one-of-two-shares rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.config import ExperimentConfig
from privfl.errors import ConfigError
from privfl.fl.aggregate import Contribution
from privfl.fl.secure.masking import FixedPoint, mask, ring_neighbours
from privfl.fl.secure.secaggplus import ClientRound, RoundAborted, ServerRound, UnmaskRefused, round_shares
from privfl.fl.secure.secaggplus_summation import SecAggParams, SecAggPlusSummation, with_dropouts

N = 300


# --- fixed point -------------------------------------------------------------------------------
def test_fraction_bits_leave_room_for_the_largest_sum() -> None:
    fx = FixedPoint(32, 100.0, 10)
    # ceil(log2(10 * 101)) = 10 integer bits, 1 sign bit: 21 fraction bits
    assert (fx.headroom_bits, fx.frac_bits, fx.step) == (10, 21, 2.0**-21)
    worst = np.full(4, 100.0)
    total = sum(fx.encode(worst)[0] for _ in range(10))
    np.testing.assert_allclose(fx.decode(fx.reduce(total)), 1000.0)
    np.testing.assert_allclose(fx.decode(fx.reduce(sum(fx.encode(-worst)[0] for _ in range(10)))), -1000.0)
    with pytest.raises(ConfigError, match="cannot hold sums of 10 values"):
        FixedPoint(16, 1e5, 10)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=20, max_value=62),
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=20),
    st.integers(min_value=1, max_value=8),
)
def test_encoded_sums_decode_within_the_stated_bound(bits, values, k) -> None:
    fx = FixedPoint(bits, 50.0, 8)
    x = np.asarray(values)
    total = fx.reduce(sum(fx.encode(x)[0] for _ in range(k)))
    error = np.abs(fx.decode(total) - k * x)
    assert np.all(error <= fx.sum_error_bound(k) + 1e-12 * k * 50.0)


def test_clipping_is_counted_and_wrapping_is_exact_mod_m() -> None:
    fx = FixedPoint(24, 4.0, 2)
    q, clipped = fx.encode(np.array([1.0, 9.0, -9.0]))
    assert clipped == 2 and list(fx.decode(q)) == [1.0, 4.0, -4.0]
    q, clipped = fx.encode(np.array([20.0]), clip=False)  # beyond 2^4, what a sum of 2 may hold
    assert clipped == 0 and fx.decode(q)[0] == 20.0 - 32.0  # wrapped, as DP's noised values may
    back = fx.reduce(q + fx.encode(np.array([-19.0]), clip=False)[0])
    assert fx.decode(back)[0] == 1.0  # the sum is still exact mod M


def test_masks_are_uniform_and_differ_by_seed() -> None:
    a, b = mask(b"\x01" * 32, 20000, 16), mask(b"\x02" * 32, 20000, 16)
    assert a.max() < 2**16 and not np.array_equal(a, b)
    assert abs(float(a.mean()) / 2**16 - 0.5) < 0.01
    np.testing.assert_array_equal(a, mask(b"\x01" * 32, 20000, 16))
    bits = (a[:, None] >> np.arange(16, dtype=np.uint64)) & np.uint64(1)
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.02)  # every bit a fair coin (sd 0.0035)
    with pytest.raises(ValueError, match=r"^a mask seed is 32 bytes, got 31$"):
        mask(b"\x01" * 31, 4, 16)


def test_ring_gives_each_client_n_neighbours_itself_included() -> None:
    ring = ring_neighbours([4, 1, 3, 0, 2], 3)
    assert ring[3] == {1, 3, 0} and all(len(v) == 3 for v in ring.values())
    assert round_shares(10, None, 0.5) == (10, 6)
    assert round_shares(10, 4, 0.5) == (5, 3)  # ring sizes are odd


# --- the protocol -------------------------------------------------------------------------------
def protocol_round(inputs, *, drop=None, fixed=None, neighbours=None, threshold=0.5, seed_order=0):
    """Clients and server in process; drop[stage] = clients that do not answer it. -> (sum, survivors)."""
    drop = drop or {}
    fixed = fixed or FixedPoint(62, 100.0, len(inputs))
    ids = sorted(inputs)
    clients = {c: ClientRound(c) for c in ids}
    server = ServerRound(0, fixed, neighbours, threshold, N)
    keys = {c: clients[c].advertise() for c in ids if c not in drop.get("advertise", ())}
    order = list(np.random.default_rng(seed_order).permutation(ids))
    to_send = server.collect_keys(keys, [int(c) for c in order])
    shares = {c: clients[c].share_keys(*to_send[c]) for c in to_send if c not in drop.get("share_keys", ())}
    inbox = server.route_shares(shares)
    for c, got in inbox.items():
        if c not in drop.get("masked_input", ()):
            server.add_masked(c, clients[c].masked_input(got, fixed.encode(inputs[c])[0], fixed))
    requests = server.unmask_requests()
    replies = {c: clients[c].unmask(*req) for c, req in requests.items() if c not in drop.get("unmask", ())}
    return fixed.decode(server.unmask(replies)), sorted(server.masked_from)


def inputs_for(k: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.normal(size=N) for c in range(k)}


@pytest.mark.parametrize("neighbours", [None, 5])
def test_sum_of_survivors_is_exact_with_dropouts_after_keys_and_after_masked_input(neighbours) -> None:
    xs = inputs_for(10)
    # max_dropout 0.2 of 10: one client leaves after sharing keys, one after sending its masked input
    got, survivors = protocol_round(xs, drop={"masked_input": {3}, "unmask": {7}}, neighbours=neighbours)
    assert survivors == [c for c in range(10) if c != 3]  # 7's input is in the sum, 3's is not
    want = sum(xs[c] for c in survivors)
    bound = FixedPoint(62, 100.0, 10).sum_error_bound(len(survivors))
    assert np.max(np.abs(got - want)) <= bound + 1e-12
    no_drop, _ = protocol_round(xs, neighbours=neighbours)
    assert np.max(np.abs(no_drop - sum(xs.values()))) <= bound + 1e-12


def test_too_many_dropouts_abort_the_round_with_the_reason() -> None:
    xs = inputs_for(6)  # n = 6, t = 4: three dropping after sharing keys leave three
    with pytest.raises(RoundAborted, match=r"live neighbours, fewer than the threshold t = 4"):
        protocol_round(xs, drop={"masked_input": {0, 1, 2}})
    with pytest.raises(RoundAborted, match="threshold"):
        protocol_round(xs, drop={"unmask": {0, 1, 2}})


def test_a_server_that_drops_an_honest_client_after_masking_cannot_unmask_it() -> None:
    """SecAgg's one-of-two rule: claiming client 0 dropped (to get its sk1) leaves its self mask on."""
    fixed = FixedPoint(62, 100.0, 5)
    xs = inputs_for(5)
    clients = {c: ClientRound(c) for c in xs}
    server = ServerRound(0, fixed, None, 0.5, N)
    to_send = server.collect_keys({c: clients[c].advertise() for c in xs}, list(xs))
    inbox = server.route_shares({c: clients[c].share_keys(*to_send[c]) for c in xs})
    y0 = clients[0].masked_input(inbox[0], fixed.encode(xs[0])[0], fixed)
    for c in range(1, 5):
        server.add_masked(c, clients[c].masked_input(inbox[c], fixed.encode(xs[c])[0], fixed))
    # client 0 did send y0, but the server says it dropped: every other client gives its sk1 share
    requests = server.unmask_requests()
    assert all(0 in dropped for _, dropped in requests.values())
    replies = {c: clients[c].unmask(*requests[c]) for c in requests}
    assert all(replies[c][0][0] == "key" for c in replies)
    sk1_shares = [replies[c][0][1] for c in replies]
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares

    assert combine_shares(sk1_shares[:3]) == clients[0].sk1  # the server does learn sk1 ...
    stripped = y0.copy()  # ... and strips every pairwise mask from y0
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    from privfl.fl.secure.secaggplus import _seed

    sk1 = bytes_to_private_key(combine_shares(sk1_shares[:3]))
    for j in range(1, 5):
        m = mask(_seed(generate_shared_key(sk1, bytes_to_public_key(server.public_keys[j][0]))), N, 62)
        stripped = fixed.reduce(stripped + m)  # client 0 has the smallest id: it subtracted each
    leaked = fixed.decode(stripped)
    # b's mask is still on: uniform over the whole decodable range (+-512 here), not x_0 ~ N(0, 1)
    assert np.mean(np.abs(leaked - xs[0])) > 100 and np.abs(np.corrcoef(leaked, xs[0])[0, 1]) < 0.3
    # control: with b as well (which no honest client hands out here) the same steps do unmask x_0
    unmasked = fixed.decode(fixed.reduce(stripped - mask(clients[0].seed, N, 62)))
    assert np.max(np.abs(unmasked - xs[0])) <= fixed.step
    # and no honest client hands over client 0's b-share after giving its sk1-share
    survivors, dropped = requests[1]
    with pytest.raises(UnmaskRefused, match="already sent neighbour 0's key share"):
        clients[1].unmask(survivors + [0], [d for d in dropped if d != 0])
    with pytest.raises(UnmaskRefused, match="both survivors and dropped"):
        clients[2].unmask([0, 1, 2, 3], [0])


def test_a_client_refuses_a_minority_threshold() -> None:
    client = ClientRound(0)
    other = ClientRound(1)
    keys = {0: client.advertise(), 1: other.advertise(), 2: ClientRound(2).advertise()}
    with pytest.raises(Exception, match="not a majority"):
        client.share_keys(keys, 1)


# --- the summation ------------------------------------------------------------------------------
def secagg(k: int, *, drop=None, bits=62, value_range=100.0, on_abort="skip") -> SecAggPlusSummation:
    params = SecAggParams(FixedPoint(bits, value_range, k), 0.5, None, 0.2)
    s = SecAggPlusSummation(params, on_abort=on_abort, debug_check=True)
    if drop:
        s.relay = with_dropouts(s.respond_all, drop)
    return s


def contributions(k: int, seed: int = 1) -> list[Contribution]:
    rng = np.random.default_rng(seed)
    return [Contribution(c, rng.normal(size=N) * (c + 1), float(c + 1)) for c in range(k)]


def test_summation_returns_the_survivors_sum_weight_and_stats() -> None:
    s = secagg(10, drop={"masked_input": {2}, "unmask": {5}})
    s.begin_round(3, N)
    cs = contributions(10)
    for c in cs:
        s.add(c)
    result = s.finish()
    kept = [c for c in cs if c.client_id != 2]
    want = sum(c.vector for c in kept)
    assert result.count == 9 and result.weight == sum(c.weight for c in kept)
    assert np.max(np.abs(result.vector - want)) <= result.stats["quant_error_bound"] + 1e-12
    assert result.stats["max_abs_error"] <= result.stats["quant_error_bound"] + 1e-12
    st_ = result.stats
    assert (st_["secagg_clients"], st_["secagg_survivors"], st_["secagg_dropped"]) == (10, 9, 1)
    assert st_["bytes_per_client"] > 8 * N and st_["clipped_values"] == 0


def test_aborted_round_is_skipped_or_stops_the_run() -> None:
    s = secagg(4, drop={"masked_input": {0, 1}})
    s.begin_round(1, N)
    for c in contributions(4):
        s.add(c)
    result = s.finish()
    assert result.count == 0 and result.stats["secagg_aborted"] == 1
    s = secagg(4, drop={"masked_input": {0, 1}}, on_abort="stop")
    s.begin_round(1, N)
    for c in contributions(4):
        s.add(c)
    with pytest.raises(RoundAborted, match="on_abort = 'stop'"):
        s.finish()


def test_config_checks_threshold_dropouts_and_range() -> None:
    base = {"secure.scheme": "secaggplus", "train.clients": 10}
    ExperimentConfig().override(base).validate()
    with pytest.raises(ConfigError, match="max_dropout = 0.3: 3 of 10 clients dropping.*fewer than t = 8"):
        ExperimentConfig().override({**base, "secure.max_dropout": 0.3, "secure.threshold": 0.7}).validate()
    with pytest.raises(ConfigError, match="threshold = 0.3"):
        ExperimentConfig().override({**base, "secure.threshold": 0.3}).validate()
    with pytest.raises(ConfigError, match="modulus_bits = 20 cannot hold"):
        ExperimentConfig().override({**base, "secure.modulus_bits": 20}).validate()
    with pytest.raises(ConfigError, match="on_abort"):
        ExperimentConfig().override({**base, "secure.on_abort": "retry"}).validate()
    assert SecAggParams.from_config(ExperimentConfig().override(base)).fixed.max_clients == 10
