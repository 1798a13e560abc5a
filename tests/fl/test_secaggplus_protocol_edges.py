"""SecAgg+'s stages at their edges: thresholds exactly at t - 1, t and t + 1; each refusal by its
message (the client, the count and the threshold it names); shares the server must not forward
or use; and which pairwise masks the server removes for clients that dropped."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt, generate_shared_key
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from privfl.errors import CryptoError
from privfl.fl.secure.masking import FixedPoint
from privfl.fl.secure.secaggplus import ClientRound, RoundAborted, ServerRound, UnmaskRefused

N = 8  # values per input


def grid_inputs(fixed: FixedPoint, ids, seed: int = 0) -> dict[int, np.ndarray]:
    """Exact multiples of the step: every sum of them is exact, so a wrong mask shows as inequality."""
    rng = np.random.default_rng(seed)
    return {c: rng.integers(-(2**30), 2**30, size=N) * fixed.step for c in ids}


class Round:
    """Clients and a server in one process, stage by stage, so a test can step in between."""

    def __init__(self, ids, *, neighbours=None, threshold=0.5, order=None, bits=62):
        self.fixed = FixedPoint(bits, 100.0, len(ids))
        self.ids = list(ids)
        self.clients = {c: ClientRound(c) for c in self.ids}
        self.server = ServerRound(0, self.fixed, neighbours, threshold, N)
        self.inputs = grid_inputs(self.fixed, self.ids)
        self.keys = {c: self.clients[c].advertise() for c in self.ids}
        self.to_send = self.server.collect_keys(self.keys, list(order or self.ids))

    def share(self, skip=()):
        return {c: self.clients[c].share_keys(*self.to_send[c]) for c in self.to_send if c not in skip}

    def mask(self, inbox, skip=()):
        for c, got in inbox.items():
            if c not in skip:
                y = self.clients[c].masked_input(got, self.fixed.encode(self.inputs[c])[0], self.fixed)
                self.server.add_masked(c, y)

    def replies(self, requests, skip=()):
        return {c: self.clients[c].unmask(*req) for c, req in requests.items() if c not in skip}

    def run(self, *, drop_shares=(), drop_masked=(), tamper_shares=None, tamper_replies=None):
        shares = self.share(drop_shares)
        if tamper_shares:
            tamper_shares(shares)
        self.mask(self.server.route_shares(shares), drop_masked)
        replies = self.replies(self.server.unmask_requests())
        if tamper_replies:
            tamper_replies(replies)
        return self.fixed.decode(self.server.unmask(replies))

    def want(self, survivors) -> np.ndarray:
        return sum(self.inputs[c] for c in survivors)


def forge(sender: ClientRound, receiver: ClientRound, said_src: int, said_dst: int) -> bytes:
    """A share encrypted by `sender` for `receiver` whose plaintext names other ends."""
    key = generate_shared_key(bytes_to_private_key(sender.sk2), bytes_to_public_key(receiver.pk2))
    return encrypt(key, share_keys_plaintext_concat(said_src, said_dst, b"b" * 20, b"k" * 20))


# --- advertise and share keys --------------------------------------------------------------------
def test_two_clients_make_a_round_and_one_is_refused_by_name() -> None:
    r = Round([4, 7])
    assert r.server.threshold == 2 and r.server.num_shares == 2
    np.testing.assert_array_equal(r.run(), r.want([4, 7]))
    lone = ServerRound(5, r.fixed, None, 0.5, N)
    with pytest.raises(RoundAborted, match=r"^round 5: 1 client\(s\) advertised keys; a sum needs >= 2$"):
        lone.collect_keys({4: r.keys[4]}, [4])


def test_the_ring_size_and_threshold_sent_are_those_of_secure_neighbours() -> None:
    r = Round(range(7), neighbours=3)
    assert (r.server.num_shares, r.server.threshold) == (3, 2)
    assert all(len(keys) == 3 and t == 2 for keys, t in r.to_send.values())
    assert set(r.to_send[0][0]) == {6, 0, 1}  # its ring neighbours, itself included
    np.testing.assert_array_equal(r.run(), r.want(range(7)))


def test_a_client_left_out_of_the_ring_order_aborts_the_round() -> None:
    fixed = FixedPoint(62, 100.0, 4)
    keys = {c: ClientRound(c).advertise() for c in range(4)}
    server = ServerRound(2, fixed, None, 0.5, N)
    with pytest.raises(
        RoundAborted,
        match=r"^round 2, share keys: client 3 has 0 live neighbours, fewer than the threshold t = 3 "
        r"\(4 of 3 clients left\); the round yields no sum$",
    ):
        server.collect_keys(keys, [0, 1, 2])


@pytest.mark.parametrize(("n", "t", "majority"), [(4, 2, False), (4, 3, True), (5, 2, False), (5, 3, True)])
def test_a_client_shares_keys_only_under_a_strict_majority_threshold(n, t, majority) -> None:
    clients = [ClientRound(c) for c in range(n)]
    keys = {c.client_id: c.advertise() for c in clients}
    if majority:
        assert sorted(clients[0].share_keys(keys, t)) == list(range(1, n)) and clients[0].threshold == t
        return
    with pytest.raises(
        CryptoError,
        match=rf"^client 0: threshold t = {t} of {n} neighbours is not a majority; refusing to share keys "
        r"\(a server could rebuild both of a client's secrets\)$",
    ):
        clients[0].share_keys(keys, t)


def test_a_threshold_of_every_neighbour_is_accepted_and_one_more_aborts() -> None:
    clients = [ClientRound(c) for c in range(3)]
    keys = {c.client_id: c.advertise() for c in clients}
    assert sorted(clients[1].share_keys(keys, 3)) == [0, 2]
    with pytest.raises(
        RoundAborted, match=r"^client 2: 3 neighbours advertised keys, fewer than threshold 4$"
    ):
        clients[2].share_keys(keys, 4)


def test_a_client_refuses_other_keys_under_its_id_and_a_repeated_key() -> None:
    clients = [ClientRound(c) for c in range(3)]
    keys = {c.client_id: c.advertise() for c in clients}
    swapped = {**keys, 0: keys[1]}
    with pytest.raises(CryptoError, match=r"^client 0: the server listed other public keys for this client$"):
        clients[0].share_keys(swapped, 2)
    with pytest.raises(CryptoError, match=r"^client 2: two neighbours advertised the same public key$"):
        clients[2].share_keys({**keys, 1: (keys[0][0], keys[1][1])}, 2)


# --- masked input ----------------------------------------------------------------------------------
def test_masked_input_needs_shares_from_t_minus_1_neighbours() -> None:
    r = Round(range(5))  # t = 3
    shares = r.share()
    inbox = r.server.route_shares(shares)
    encoded = r.fixed.encode(r.inputs[0])[0]
    two = {src: inbox[0][src] for src in (1, 2)}  # t - 1 neighbours and itself: t
    assert r.clients[0].masked_input(two, encoded, r.fixed).shape == (N,)
    assert r.clients[0].masked_with == [1, 2]
    with pytest.raises(
        RoundAborted, match=r"^client 3: shares came from 1 neighbours, fewer than threshold 3 - 1$"
    ):
        r.clients[3].masked_input({1: inbox[3][1]}, encoded, r.fixed)


def test_masked_input_refuses_shares_from_a_stranger_or_itself_and_mislabelled_ones() -> None:
    r = Round(range(4))  # t = 3
    inbox = r.server.route_shares(r.share())
    encoded = r.fixed.encode(r.inputs[0])[0]
    c0, c1 = r.clients[0], r.clients[1]
    for src in (9, 0):
        got = {**{s: inbox[0][s] for s in (1, 2)}, src: inbox[0][3]}
        with pytest.raises(
            CryptoError, match=rf"^client 0: the server forwarded shares from non-neighbour {src}$"
        ):
            c0.masked_input(got, encoded, r.fixed)
    # client 1 encrypted these for client 0 itself, but their plaintexts name other ends
    for said in ((3, 0), (1, 2)):
        got = {**inbox[0], 1: forge(c1, c0, *said)}
        with pytest.raises(
            CryptoError, match=rf"^client 0: a share said {said[0]} -> {said[1]}, the server said 1 -> 0$"
        ):
            c0.masked_input(got, encoded, r.fixed)


# --- unmask requests and replies --------------------------------------------------------------------
def test_unmask_needs_t_survivors_and_names_the_overlap_it_refuses() -> None:
    r = Round(range(5))  # t = 3
    r.mask(r.server.route_shares(r.share()))
    c2 = r.clients[2]
    assert set(c2.unmask([0, 1, 2], [])) == {0, 1, 2}  # exactly t survivors
    with pytest.raises(RoundAborted, match=r"^client 4: 2 neighbours survived, fewer than threshold 3$"):
        r.clients[4].unmask([0, 1], [2, 3])
    with pytest.raises(UnmaskRefused, match=r"^client 3: the server named \[1\] both survivors and dropped$"):
        r.clients[3].unmask([0, 1, 2, 3], [1, 4])


def test_aborts_name_the_stage_that_lost_too_many_clients() -> None:
    r = Round(range(6))  # t = 4
    with pytest.raises(
        RoundAborted,
        match=r"^round 0, collect shares: client 3 has 3 live neighbours, fewer than the threshold t = 4 "
        r"\(3 of 6 clients left\); the round yields no sum$",
    ):
        r.server.route_shares(r.share(skip={0, 1, 2}))
    r = Round(range(6))
    r.mask(r.server.route_shares(r.share()), skip={0, 1, 2})
    with pytest.raises(RoundAborted, match=r"^round 0, masked input: client 3 has 3 live neighbours"):
        r.server.unmask_requests()
    r = Round(range(6))
    r.mask(r.server.route_shares(r.share()))
    replies = r.replies(r.server.unmask_requests(), skip={0, 1, 2})
    with pytest.raises(RoundAborted, match=r"^round 0, unmask: client 3 has 3 live neighbours"):
        r.server.unmask(replies)


def test_the_server_refuses_a_masked_input_without_shares_or_of_the_wrong_size() -> None:
    r = Round(range(3))
    r.server.route_shares(r.share(skip={2}))  # t = 2: 0 and 1 are enough
    y = np.zeros(N, np.uint64)
    with pytest.raises(CryptoError, match=r"^round 0: client 2 sent a masked input without shares$"):
        r.server.add_masked(2, y)
    with pytest.raises(CryptoError, match=rf"^round 0: client 1 sent \(7,\) values, expected {N}$"):
        r.server.add_masked(1, np.zeros(7, np.uint64))
    with pytest.raises(RoundAborted, match=r"^round 0: no client sent a masked input$"):
        r.server.unmask({})


def test_a_masked_input_that_arrives_as_int64_sums_the_same() -> None:
    """Z_M residues below 2^62 travel as int64 where a transport has no uint64 (tensors)."""
    r = Round(range(3))
    inbox = r.server.route_shares(r.share())
    for c, got in inbox.items():
        y = r.clients[c].masked_input(got, r.fixed.encode(r.inputs[c])[0], r.fixed)
        r.server.add_masked(c, y.astype(np.int64))
    replies = r.replies(r.server.unmask_requests())
    np.testing.assert_array_equal(r.fixed.decode(r.server.unmask(replies)), r.want(range(3)))


def test_route_shares_forwards_only_to_the_senders_ring_neighbours() -> None:
    r = Round(range(5), neighbours=3)  # client 0's neighbours: 4 and 1
    shares = r.share()
    shares[0][2] = b"not for a non-neighbour"
    shares[0][7] = b"not for a client of the round"
    inbox = r.server.route_shares(shares)
    assert sorted(inbox[2]) == [1, 3] and 7 not in inbox and sorted(inbox[1]) == [0, 2]


def test_shares_a_reply_holds_for_owners_outside_the_senders_ring_are_ignored() -> None:
    r = Round(range(5), neighbours=3)

    def tamper(replies):
        for sender, shares in replies.items():
            stranger = (sender + 2) % 5  # not in its ring of 3; put first
            replies[sender] = {stranger: ("seed", b"\x00" * 52), **shares}

    np.testing.assert_array_equal(r.run(tamper_replies=tamper), r.want(range(5)))


def test_too_few_or_no_shares_of_a_secret_abort_naming_the_owner_and_the_secret() -> None:
    def drop_shares_of(owner, kind, keep):
        def tamper(replies):
            held = [s for s in replies if owner in replies[s] and replies[s][owner][0] == kind]
            for s in held[keep:]:
                del replies[s][owner]

        return tamper

    for keep in (2, 0):  # t = 3
        r = Round(range(5))
        with pytest.raises(
            RoundAborted,
            match=rf"^round 0: {keep} shares of client 1's self-mask seed came back, fewer than the "
            r"threshold t = 3; the round yields no sum$",
        ):
            r.run(tamper_replies=drop_shares_of(1, "seed", keep))
        r = Round(range(5))
        with pytest.raises(RoundAborted, match=rf"^round 0: {keep} shares of client 4's mask key came back"):
            r.run(drop_masked={4}, tamper_replies=drop_shares_of(4, "key", keep))


def test_a_share_returned_as_the_other_kind_is_not_used_as_that_secret() -> None:
    def relabel(owner, kind):
        def tamper(replies):
            for s in replies:
                if owner in replies[s]:
                    replies[s][owner] = (kind, replies[s][owner][1])

        return tamper

    r = Round(range(5))
    with pytest.raises(RoundAborted, match=r"^round 0: 0 shares of client 1's self-mask seed came back"):
        r.run(tamper_replies=relabel(1, "key"))  # a survivor's shares called key shares
    r = Round(range(5))
    with pytest.raises(RoundAborted, match=r"^round 0: 0 shares of client 4's mask key came back"):
        r.run(drop_masked={4}, tamper_replies=relabel(4, "seed"))


def test_shares_that_do_not_combine_are_named() -> None:
    def same_share(owner, kind):
        def tamper(replies):
            one = next(replies[s][owner][1] for s in replies if owner in replies[s])
            for s in replies:
                if owner in replies[s]:
                    replies[s][owner] = (kind, one)

        return tamper

    r = Round(range(5))
    with pytest.raises(CryptoError, match=r"^round 0: client 2's self-mask seed shares do not combine: "):
        r.run(tamper_replies=same_share(2, "seed"))
    r = Round(range(5))
    with pytest.raises(CryptoError, match=r"^round 0: client 3's mask key shares do not combine: "):
        r.run(drop_masked={3}, tamper_replies=same_share(3, "key"))


# --- the pairwise masks of dropped clients -------------------------------------------------------
def test_two_neighbours_dropping_after_sharing_keys_leave_an_exact_sum() -> None:
    """The server removes a dropped client's masks with survivors only: the two dropped clients
    never masked an input the server summed, so their shared mask is not there to remove."""
    r = Round(range(10))  # t = 6
    np.testing.assert_array_equal(r.run(drop_masked={3, 4}), r.want(c for c in range(10) if c not in (3, 4)))
    r = Round(range(9), neighbours=5)
    got = r.run(drop_masked={0, 8})
    np.testing.assert_array_equal(got, r.want(range(1, 8)))


def test_a_survivor_a_dropped_client_sent_no_share_did_not_mask_with_it() -> None:
    """Client 5 withholds its share from client 0 (the smallest survivor), then drops: 0 never
    masked with 5, so the server must remove 5's masks with 1, 2, 3 and 4 only."""
    r = Round(range(6))  # t = 4: the key shares of 1, 2, 3 and 4 rebuild 5's key

    def withhold(shares):
        del shares[5][0]

    np.testing.assert_array_equal(r.run(drop_masked={5}, tamper_shares=withhold), r.want(range(5)))


def test_only_masks_with_survivors_are_removed_when_two_dropped_clients_shared_one_way() -> None:
    """3 withholds its share from 4; both drop after sharing keys. 4's mask with 3 was never in
    the sum (neither sent an input), so removing it from 4's side alone would corrupt the sum."""
    r = Round(range(10))  # t = 6

    def withhold(shares):
        del shares[3][4]

    got = r.run(drop_masked={3, 4}, tamper_shares=withhold)
    np.testing.assert_array_equal(got, r.want(c for c in range(10) if c not in (3, 4)))
