"""Membership pieces with known answers: gradient alignment, balanced sets, LiRA's statistic and score."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from privfl.attacks.membership import (
    MembershipAttackConfig,
    balanced_sets,
    gradient_cosines,
    heldout_pool,
    lira_score,
    logit_confidence,
)
from privfl.config import ModelConfig
from privfl.data.dataset import PreparedData
from privfl.errors import ConfigError
from privfl.models import build_model, get_flat
from tests.attacks.conftest import make_speech_set


def small_cnn():
    return build_model(ModelConfig(name="cnn", conv_channels=4, fc_hidden=8), n_mels=8)


def test_one_sgd_step_on_one_utterance_aligns_perfectly_with_its_gradient():
    torch.manual_seed(0)
    data = make_speech_set({"a": "female"}, per_speaker=3)
    model = small_cnn()
    w = get_flat(model)
    # the client trains on utterance 0 alone: delta = -lr * grad(w; x0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(data.x[:1], data.lengths[:1]), data.y[:1]).backward()
    opt.step()
    delta = get_flat(model) - w
    cos = gradient_cosines(small_cnn(), w, data, -delta[None, :])
    assert cos.shape == (3, 1)
    assert cos[0, 0] == pytest.approx(1.0, abs=1e-4)
    assert cos[1, 0] < 0.999 and cos[2, 0] < 0.999


def test_members_of_a_multi_step_update_align_more_than_non_members():
    torch.manual_seed(1)
    members = make_speech_set({"a": "female"}, per_speaker=8, seed=1)
    others = make_speech_set({"b": "male"}, per_speaker=8, seed=2)
    model = small_cnn()
    w = get_flat(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for start in (0, 4):  # two minibatches of 4, like a local epoch
        opt.zero_grad()
        sl = slice(start, start + 4)
        nn.functional.cross_entropy(model(members.x[sl], members.lengths[sl]), members.y[sl]).backward()
        opt.step()
    delta = get_flat(model) - w
    cos_in = gradient_cosines(small_cnn(), w, members, -delta[None, :])[:, 0]
    cos_out = gradient_cosines(small_cnn(), w, others, -delta[None, :])[:, 0]
    assert cos_in.mean() > cos_out.mean() + 0.1


def test_balanced_sets_are_equal_sized_seeded_and_labelled(rng):
    members = make_speech_set({"a": "female", "b": "male"}, per_speaker=10)
    nonmembers = make_speech_set({"c": "female"}, per_speaker=7)
    cands, labels = balanced_sets(members, nonmembers, rng)
    assert len(cands) == 14 and labels.tolist() == [1] * 7 + [0] * 7
    assert set(cands.ids[:7]) <= set(members.ids) and set(cands.ids[7:]) <= set(nonmembers.ids)
    again, _ = balanced_sets(members, nonmembers, np.random.default_rng(0))
    assert again.ids == cands.ids
    capped, labels = balanced_sets(members, nonmembers, rng, limit=3)
    assert len(capped) == 6


def test_logit_confidence_by_hand():
    logits = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = logit_confidence(logits, np.array([0, 3]))
    # p = e^2 / (e^2 + 3): log(p / (1 - p)) = 2 - log 3;  uniform: log(1/3)
    np.testing.assert_allclose(out, [2 - math.log(3), -math.log(3)])


def test_lira_prefers_in_when_the_target_looks_like_the_in_shadows():
    rng = np.random.default_rng(0)
    s, n = 8, 20
    inside = np.zeros((s, n), bool)
    inside[:4] = True
    conf = np.where(inside, 2.0, -2.0) + rng.normal(0, 0.3, (s, n))
    scores = lira_score(np.r_[np.full(10, 2.0), np.full(10, -2.0)], conf, inside)
    assert (scores[:10] > 0).all() and (scores[10:] < 0).all()


def test_membership_config_is_validated():
    with pytest.raises(ConfigError, match="even number"):
        MembershipAttackConfig(methods=("lira",), lira_shadows=3).validate()
    with pytest.raises(ConfigError, match="not among"):
        MembershipAttackConfig(methods=("guess",)).validate()


def test_non_member_pool_is_every_held_out_utterance_and_no_training_one():
    train = make_speech_set({"t1": "female", "t2": "male"}, per_speaker=6, seed=1)
    val = make_speech_set({"v1": "female"}, per_speaker=5, seed=2)
    test = make_speech_set({"s1": "male"}, per_speaker=4, seed=3)
    aux = make_speech_set({"a1": "female", "a2": "male"}, per_speaker=3, seed=4)
    data = PreparedData(None, None, train, val, test, aux, [], 8)
    pool = heldout_pool(data)
    assert sorted(pool.ids) == sorted(val.ids + test.ids + aux.ids)
    assert not set(pool.speakers) & set(train.speakers)
    cands, labels = balanced_sets(train, pool, np.random.default_rng(0))
    members = {i for i, lab in zip(cands.ids, labels, strict=True) if lab == 1}
    nonmembers = {i for i, lab in zip(cands.ids, labels, strict=True) if lab == 0}
    assert members <= set(train.ids) and nonmembers <= set(pool.ids) and len(nonmembers) == 12


def test_speaker_groups_put_training_speakers_first_with_label_1():
    from privfl.attacks.membership import speaker_groups

    members = make_speech_set({"a": "female", "b": "male"}, per_speaker=3)
    others = make_speech_set({"c": "female"}, per_speaker=2, seed=1)
    sets, labels, names = speaker_groups(members, others)
    assert names == ["a", "b", "c"] and labels.tolist() == [1, 1, 0]
    assert [len(s) for s in sets] == [3, 3, 2] and set(sets[1].speakers) == {"b"}


def test_a_speakers_gradient_points_along_its_own_clients_update_only():
    """Planted: client updates are SGD steps on one speaker each; every other speaker is a non-member."""
    from privfl.attacks.membership import _cosines, speaker_gradients, speaker_groups

    torch.manual_seed(0)
    genders = {f"s{i}": "female" for i in range(6)}
    every = make_speech_set(genders, per_speaker=6, seed=3)
    members = every.take(np.flatnonzero(np.isin(every.speakers, ["s0", "s1", "s2"])))
    others = every.take(np.flatnonzero(np.isin(every.speakers, ["s3", "s4", "s5"])))
    sets, labels, _ = speaker_groups(members, others)
    model = small_cnn()
    w = get_flat(model)
    grads = speaker_gradients(small_cnn(), w, sets)
    deltas = -0.1 * grads[:3]  # one full-batch SGD step per client, on its own speaker
    score = _cosines(-grads, deltas).max(axis=1)
    assert score[:3] == pytest.approx(1.0, abs=1e-5)
    assert score[3:].max() < 0.99
    # the same scores against updates of no one in the set: members no longer stand out
    noise = np.random.default_rng(0).normal(size=deltas.shape)
    assert np.abs(_cosines(-grads, noise)).max() < 0.3  # 276 dimensions: chance cosines sd 0.06
    np.testing.assert_allclose(_cosines(np.eye(2), np.array([[3.0, 4.0]]))[:, 0], [0.6, 0.8])


def test_speaker_gradients_in_parallel_equal_one_backward_per_speaker():
    """Each worker thread loads the weights into its own model copy: a shared model would mix speakers."""
    from privfl.attacks.membership import speaker_gradients, speaker_groups
    from privfl.models import canonical_parameters, set_flat
    from privfl.parallel import torch_threads

    every = make_speech_set({f"s{i}": "female" for i in range(7)}, per_speaker=3, seed=5)
    sets, _, _ = speaker_groups(every, every.take(np.array([], dtype=np.int64)))
    model = small_cnn()
    w = get_flat(model) + np.random.default_rng(1).normal(scale=0.05, size=get_flat(model).shape).astype(
        np.float32
    )
    got = speaker_gradients(small_cnn(), w, sets)
    reference = small_cnn()
    set_flat(reference, w)
    params = [p for _, p in canonical_parameters(reference)]
    with torch_threads(1):
        for row, s in zip(got, sets, strict=True):
            loss = nn.functional.cross_entropy(reference(s.x, s.lengths), s.y)
            want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).numpy()
            np.testing.assert_array_equal(row, want)
    assert got.shape == (7, w.shape[0]) and len({r.tobytes() for r in got}) == 7


def test_gradient_cosines_in_parallel_equal_a_plain_per_sample_loop():
    from privfl.attacks.membership import gradient_cosines
    from privfl.models import canonical_parameters, set_flat
    from privfl.parallel import torch_threads

    speech = make_speech_set({"a": "female", "b": "male"}, per_speaker=5, seed=9)
    speech = dataclasses.replace(speech, lengths=torch.tensor([20, 13, 7, 20, 16, 9, 20, 11, 18, 5]))
    model = small_cnn()
    w = get_flat(model)
    directions = np.random.default_rng(2).normal(size=(3, w.shape[0]))
    seen = []
    got = gradient_cosines(small_cnn(), w, speech, directions, lambda d, n: seen.append((d, n)))
    assert seen == [(i, 10) for i in range(1, 11)]
    reference = small_cnn()
    set_flat(reference, w)
    params = [p for _, p in canonical_parameters(reference)]
    d = torch.from_numpy(directions.astype(np.float32))
    d = d / d.norm(dim=1, keepdim=True)
    with torch_threads(1):
        for i, row in enumerate(got):
            x = speech.x[i : i + 1, : int(speech.lengths[i])]
            loss = nn.functional.cross_entropy(reference(x, speech.lengths[i : i + 1]), speech.y[i : i + 1])
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
            np.testing.assert_array_equal(row, (d @ g / g.norm()).double().numpy())
    assert gradient_cosines(small_cnn(), w, speech.take(np.array([], dtype=np.int64)), directions).shape == (
        0,
        3,
    )
