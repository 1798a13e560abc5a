"""Speaker splits at their edges: unexpected gender labels, the fair first pick, refusals by message."""

from __future__ import annotations

import pytest

from privfl.data.splits import iemocap_loso_split, iemocap_paper_split, speaker_split
from privfl.errors import ConfigError, DataError
from tests.data.test_splits import IEMOCAP, make_corpus, toy


def test_a_gender_label_outside_the_known_ones_counts_as_unknown():
    """A loader that passes "F" through: that speaker is used only after both genders, like 'unknown'."""
    corpus = make_corpus({"f0": "female", "f1": "female", "m0": "male", "m1": "male", "odd": "F"})
    for seed in range(20):
        split = speaker_split(corpus, n_val=2, n_test=2, n_aux=0, seed=seed)
        assert split.train == ("odd",)
        assert {s[0] for s in split.val} == {"f", "m"} and {s[0] for s in split.test} == {"f", "m"}


def test_which_gender_is_taken_first_is_a_fair_coin():
    """One validation speaker from 10 F + 10 M: female in about half of 400 seeds."""
    corpus = toy(10, 10)
    female = sum(
        speaker_split(corpus, n_val=1, n_test=1, n_aux=0, seed=s).val[0][0] == "f" for s in range(400)
    )
    assert 0.4 < female / 400 < 0.6


def test_loso_refusals_name_what_the_corpus_holds():
    no_session_5 = IEMOCAP.subset(lambda u: not u.speaker.startswith("Ses05"))
    with pytest.raises(
        DataError,
        match=r"^IEMOCAP session 5 has 0 speaker\(s\) in the corpus \(none\); "
        r"the split needs both Ses05F and Ses05M$",
    ):
        iemocap_loso_split(no_session_5, test_session=5)
    one_other = IEMOCAP.subset(lambda u: u.speaker.startswith("Ses05") or u.speaker == "Ses01F")
    with pytest.raises(
        DataError,
        match=r"^IEMOCAP split has 1 training speakers; n_aux=1 would leave none for training; "
        r"ask for at most 0$",
    ):
        iemocap_loso_split(one_other, test_session=5, n_aux=1)


def test_paper_split_refusal_names_the_alternative():
    with pytest.raises(
        ConfigError,
        match=r"^test_speaker must be 'Ses05F' or 'Ses05M' for the paper split, got 'Ses03F'; "
        r"use iemocap_loso_split to hold out another session$",
    ):
        iemocap_paper_split(IEMOCAP, test_speaker="Ses03F")
