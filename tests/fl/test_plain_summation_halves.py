"""PlainSummation's two halves: what a client uploads in the clear and what the server sums from it."""

from __future__ import annotations

import numpy as np
import pytest

from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution, PlainSummation, RoundKeys, Upload
from privfl.fl.client import Update


def test_the_keys_of_a_plaintext_round_carry_no_key_material():
    assert PlainSummation().begin_round(4, 3) == RoundKeys(4, 3)


def test_a_clear_upload_reaches_the_policy_as_the_clients_update():
    s = PlainSummation()
    keys = s.begin_round(2, 3)
    seen: list[Update] = []

    def policy(update: Update) -> Contribution:
        seen.append(update)
        return Contribution(update.client_id, update.delta.astype(np.float64) * update.num_samples, 7.0)

    delta = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    upload = s.encode(Update(5, 2, delta, 7, 0.3), policy, keys)
    assert (upload.client_id, upload.round_index, upload.num_samples) == (5, 2, 7)
    assert upload.delta is delta and upload.ciphertext is None
    s.submit(upload, policy)
    (update,) = seen
    assert (update.client_id, update.round, update.num_samples) == (5, 2, 7) and update.delta is delta
    result = s.finish()
    np.testing.assert_array_equal(result.vector, delta.astype(np.float64) * 7)
    assert result.weight == 7.0 and result.count == 1


def test_a_ciphertext_sent_to_a_plaintext_summation_is_refused_by_name():
    s = PlainSummation()
    s.begin_round(1, 2)
    with pytest.raises(
        CryptoError,
        match=r"^client 3 sent a ciphertext to a plaintext summation; server and clients must run the same "
        r"secure\.scheme$",
    ):
        s.submit(Upload(3, 1, 5, ciphertext=b"x"), lambda u: Contribution(3, np.zeros(2), 1.0))


def test_clipped_contributions_are_counted_per_round():
    s = PlainSummation()
    s.begin_round(1, 2)
    for clipped in (True, False, True):
        s.add(Contribution(0, np.ones(2), 1.0, clipped=clipped))
    assert s.finish().clipped == 2
    s.begin_round(2, 2)
    s.add(Contribution(0, np.ones(2), 1.0, clipped=False))
    assert s.finish().clipped == 0  # a new round counts afresh
