"""A client refuses to encrypt, saying why, whenever the round's announcement is not what it trusts."""

from __future__ import annotations

import numpy as np
import pytest

from privfl.config import CkksParams
from privfl.errors import CryptoError
from privfl.fl.aggregate import Contribution
from privfl.fl.secure import Encryptor, KeyHolder, enrol_clients

PARAMS = CkksParams(max_clients=4)


@pytest.fixture(scope="module")
def round0():
    keys, registry = enrol_clients([0, 1])
    holder = KeyHolder(PARAMS, registry, min_clients=2)
    announcement, signature = holder.open_round(0, 3)
    return keys, registry, holder, announcement, signature


def test_an_announcement_not_signed_by_the_pinned_key_holder_is_refused(round0):
    keys, registry, holder, announcement, signature = round0
    impostor = KeyHolder(PARAMS, registry, min_clients=2)  # the relay's own key holder
    encryptor = Encryptor(impostor.verify_key, holder.public_context)
    with pytest.raises(
        CryptoError,
        match=r"^the round announcement is not signed by the pinned key holder; refusing to encrypt "
        r"\(the relay changed it, or the client pinned another key holder\)$",
    ):
        encryptor.seal(Contribution(0, np.ones(3), 1.0), announcement, signature, keys[0])


def test_a_public_context_other_than_the_announced_one_is_refused(round0):
    keys, registry, holder, announcement, signature = round0
    swapped = KeyHolder(PARAMS, registry, min_clients=2).public_context  # a key the relay holds
    encryptor = Encryptor(holder.verify_key, swapped)
    with pytest.raises(
        CryptoError,
        match=r"^the public context does not match the key holder's signed fingerprint; refusing to "
        r"encrypt under a key the key holder did not publish$",
    ):
        encryptor.seal(Contribution(0, np.ones(3), 1.0), announcement, signature, keys[0])


def test_an_update_that_is_not_a_vector_is_refused_naming_its_shape(round0):
    keys, _, holder, announcement, signature = round0
    encryptor = Encryptor(holder.verify_key, holder.public_context)
    with pytest.raises(CryptoError, match=r"^client 1's update has shape \(1, 3\), expected 1-D$"):
        encryptor.seal(Contribution(1, np.ones((1, 3)), 1.0), announcement, signature, keys[1])
