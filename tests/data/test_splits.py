from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.data.records import EMOTIONS, Corpus, Utterance
from privfl.data.splits import (
    ROLES,
    Split,
    default_split,
    iemocap_loso_split,
    iemocap_paper_split,
    speaker_split,
)
from privfl.errors import ConfigError, DataError


def make_corpus(genders: dict[str, str], name: str = "toy", per_speaker: int = 4) -> Corpus:
    """A corpus with `per_speaker` utterances (cycling through EMOTIONS) per speaker; no audio needed."""
    utterances = tuple(
        Utterance(
            id=f"{s}-{i}",
            path=f"/x/{s}-{i}.wav",
            speaker=s,
            gender=g,
            emotion=EMOTIONS[i % 4],
            session=s[:5] if name == "iemocap" else "",
        )
        for s, g in genders.items()
        for i in range(per_speaker)
    )
    return Corpus(name=name, utterances=utterances)


def toy(n_female: int, n_male: int, n_unknown: int = 0) -> Corpus:
    genders = {f"f{i:02d}": "female" for i in range(n_female)}
    genders |= {f"m{i:02d}": "male" for i in range(n_male)}
    genders |= {f"u{i:02d}": "unknown" for i in range(n_unknown)}
    return make_corpus(genders)


IEMOCAP = make_corpus(
    {f"Ses0{s}{g}": "female" if g == "F" else "male" for s in range(1, 6) for g in "FM"}, name="iemocap"
)


@st.composite
def split_case(draw):
    n_female, n_male, n_unknown = draw(st.integers(0, 12)), draw(st.integers(0, 12)), draw(st.integers(0, 3))
    total = n_female + n_male + n_unknown
    if total < 2:
        n_female += 2 - total
        total = 2
    budget = total - 1
    n_val = draw(st.integers(0, budget))
    n_test = draw(st.integers(0, budget - n_val))
    n_aux = draw(st.integers(0, budget - n_val - n_test))
    return n_female, n_male, n_unknown, n_val, n_test, n_aux, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=200, deadline=None)
@given(split_case())
def test_speaker_split_invariants(case) -> None:
    n_female, n_male, n_unknown, n_val, n_test, n_aux, seed = case
    corpus = toy(n_female, n_male, n_unknown)
    split = speaker_split(corpus, n_val=n_val, n_test=n_test, n_aux=n_aux, seed=seed)
    roles = [set(getattr(split, r)) for r in ROLES]
    assert sum(len(r) for r in roles) == len(set().union(*roles))  # disjoint
    assert set().union(*roles) == set(corpus.speakers())
    assert (len(split.val), len(split.test), len(split.aux)) == (n_val, n_test, n_aux)
    assert len(split.train) >= 1
    assert split == speaker_split(corpus, n_val=n_val, n_test=n_test, n_aux=n_aux, seed=seed)

    gender = corpus.gender_of()
    need = sum(math.ceil(n / 2) for n in (n_val, n_test, n_aux))
    for role in ("val", "test", "aux"):
        members = getattr(split, role)
        female = sum(gender[s] == "female" for s in members)
        male = sum(gender[s] == "male" for s in members)
        if n_female >= need and n_male >= need:
            assert abs(female - male) <= 1, (role, members)
            assert female + male == len(members)  # unknown-gender speakers only once both run out
        # Never an unknown-gender speaker while a known-gender one was left for training.
        if any(gender[s] == "unknown" for s in members):
            assert all(gender[s] == "unknown" for s in split.train)


def test_speaker_split_seed_changes_choice() -> None:
    corpus = toy(10, 10)
    splits = {speaker_split(corpus, n_val=2, n_test=2, n_aux=2, seed=s) for s in range(10)}
    assert len(splits) > 5


def test_speaker_split_balances_worked_example() -> None:
    split = speaker_split(toy(6, 6), n_val=2, n_test=2, n_aux=4, seed=0)
    for role in ("val", "test", "aux"):
        members = getattr(split, role)
        assert sum(s.startswith("f") for s in members) == len(members) // 2
    assert len(split.train) == 4


def test_speaker_split_too_few_speakers_names_numbers() -> None:
    with pytest.raises(DataError, match=r"4 speakers.*n_val=2 \+ n_test=1 \+ n_aux=1 = 4.*at most 3"):
        speaker_split(toy(2, 2), n_val=2, n_test=1, n_aux=1, seed=0)
    with pytest.raises(ConfigError, match="n_test"):
        speaker_split(toy(2, 2), n_val=1, n_test=-1, n_aux=0, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        speaker_split(toy(2, 2), n_val=1, n_test=1, n_aux=0, seed=-3)


def test_paper_split() -> None:
    split = iemocap_paper_split(IEMOCAP)
    assert split.test == ("Ses05F",) and split.val == ("Ses05M",) and split.aux == ()
    assert split.train == tuple(f"Ses0{s}{g}" for s in range(1, 5) for g in "FM")
    swapped = iemocap_paper_split(IEMOCAP, test_speaker="Ses05M")
    assert (swapped.test, swapped.val) == (("Ses05M",), ("Ses05F",))
    with pytest.raises(ConfigError, match="Ses05F.*Ses05M.*iemocap_loso_split"):
        iemocap_paper_split(IEMOCAP, test_speaker="Ses03F")


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.sampled_from(["female", "male"]), st.integers(0, 7), st.integers(0, 1000))
def test_loso_split_invariants(session: int, gender: str, n_aux: int, seed: int) -> None:
    split = iemocap_loso_split(IEMOCAP, test_session=session, test_gender=gender, n_aux=n_aux, seed=seed)
    tag = f"Ses0{session}"
    assert split.test == (f"{tag}{gender[0].upper()}",)
    assert {*split.val, *split.test} == {f"{tag}F", f"{tag}M"}
    assert len(split.aux) == n_aux and len(split.train) == 8 - n_aux
    assert set(split.speakers()) == set(IEMOCAP.speakers())
    assert not any(s.startswith(tag) for s in (*split.train, *split.aux))
    females = sum(s.endswith("F") for s in split.aux)
    assert abs(females - (n_aux - females)) <= 1


def test_loso_errors_name_the_numbers() -> None:
    no_m = IEMOCAP.subset(lambda u: u.speaker != "Ses05M")
    with pytest.raises(DataError, match=r"session 5 has 1 speaker\(s\) .*Ses05F.*Ses05M"):
        iemocap_paper_split(no_m)
    with pytest.raises(DataError, match=r"8 training speakers; n_aux=8.*at most 7"):
        iemocap_paper_split(IEMOCAP, n_aux=8)
    with pytest.raises(ConfigError, match="1-5"):
        iemocap_loso_split(IEMOCAP, test_session=6)
    with pytest.raises(ConfigError, match="test_gender"):
        iemocap_loso_split(IEMOCAP, test_session=1, test_gender="F")
    with pytest.raises(DataError, match="speaker_split"):
        iemocap_paper_split(toy(3, 3))


def test_split_dataclass() -> None:
    split = Split(train=["a", "b"], val=("c",), test=("d",), aux=("e",))
    assert split.train == ("a", "b")  # lists become tuples
    assert [split.role_of(s) for s in "abcde"] == ["train", "train", "val", "test", "aux"]
    assert split.roles() == {"a": "train", "b": "train", "c": "val", "d": "test", "e": "aux"}
    with pytest.raises(DataError, match="'z' is in no role"):
        split.role_of("z")
    with pytest.raises(DataError, match="'c' is in both the val and test"):
        Split(train=("a",), val=("c",), test=("c",))
    with pytest.raises(DataError, match="string"):
        Split(train="ab", val=(), test=())
    corpus = make_corpus({"a": "female", "c": "male"})
    assert {u.speaker for u in split.subset(corpus, "val").utterances} == {"c"}
    with pytest.raises(ConfigError, match="role"):
        split.subset(corpus, "dev")
    assert split.as_dict() == {"train": ["a", "b"], "val": ["c"], "test": ["d"], "aux": ["e"]}


def test_default_split() -> None:
    assert default_split(IEMOCAP) == iemocap_paper_split(IEMOCAP)
    split = default_split(toy(12, 12), seed=3)
    assert (len(split.val), len(split.test), len(split.train)) == (2, 2, 20)
    assert len(default_split(toy(5, 5)).test) == 1


def test_iemocap_splits_pass_their_aux_count_and_seed_on() -> None:
    """The aux speakers are drawn with the given seed, and the defaults are the documented ones."""
    by_seed = {seed: default_split(IEMOCAP, n_aux=3, seed=seed) for seed in range(6)}
    for seed, split in by_seed.items():
        assert split == iemocap_paper_split(IEMOCAP, n_aux=3, seed=seed)
        assert split == iemocap_loso_split(IEMOCAP, test_session=5, test_gender="female", n_aux=3, seed=seed)
        assert len(split.aux) == 3
    assert len({split.aux for split in by_seed.values()}) > 1  # the seed reaches the draw
    assert iemocap_loso_split(IEMOCAP, test_session=2) == iemocap_loso_split(
        IEMOCAP, test_session=2, test_gender="female", n_aux=0, seed=0
    )
    assert iemocap_paper_split(IEMOCAP, n_aux=2) == iemocap_paper_split(IEMOCAP, n_aux=2, seed=0)
    with pytest.raises(ConfigError, match="1-5"):
        iemocap_loso_split(IEMOCAP, test_session=True)  # a bool is not a session number
    with pytest.raises(ConfigError, match="^n_aux must"):
        iemocap_loso_split(IEMOCAP, test_session=1, n_aux=-1)


def test_split_messages_list_roles_and_speakers_exactly() -> None:
    split = Split(train=("a",), val=("c",), test=("d",))
    with pytest.raises(DataError, match=r"it holds train: 1, val: 1, test: 1, aux: 0 speakers$"):
        split.role_of("z")
    with pytest.raises(ConfigError, match=r"expected one of train, val, test, aux$"):
        split.subset(make_corpus({"a": "female"}), "dev")
    no_m = IEMOCAP.subset(lambda u: u.speaker != "Ses05M")
    with pytest.raises(DataError, match=r"\(Ses05F\); the split needs both Ses05F and Ses05M"):
        iemocap_paper_split(no_m)
    with pytest.raises(
        DataError, match=r"\(e\.g\. 'f00'; expected 'Ses01F'\.\.'Ses05M'\); use speaker_split"
    ):
        iemocap_paper_split(toy(3, 3))


def test_split_counts_and_seeds_are_validated_by_name() -> None:
    corpus = toy(4, 4)
    for name in ("n_val", "n_test", "n_aux"):
        counts = {"n_val": 1, "n_test": 1, "n_aux": 1, name: -1}
        with pytest.raises(ConfigError, match=rf"^{name} must be a whole number >= 0, got -1$"):
            speaker_split(corpus, **counts, seed=0)
    with pytest.raises(ConfigError, match="^n_val must be a whole number >= 0, got True$"):
        speaker_split(corpus, n_val=True, n_test=1, n_aux=0, seed=0)
    with pytest.raises(ConfigError, match="True"):
        speaker_split(corpus, n_val=1, n_test=1, n_aux=0, seed=True)
    one = toy(1, 0)
    with pytest.raises(
        DataError, match=r"ask for at most 0 held-out speakers, e.g\. --set data\.aux_speakers=0 "
    ):
        speaker_split(one, n_val=1, n_test=0, n_aux=0, seed=0)
    with pytest.raises(DataError, match=r"each speaker may have one role$"):
        Split(train=("a",), val=("a",), test=())


def test_default_seeds_are_zero() -> None:
    assert default_split(toy(12, 12)) == default_split(toy(12, 12), seed=0)
    assert default_split(toy(12, 12)) != default_split(toy(12, 12), seed=1)
    assert iemocap_loso_split(IEMOCAP, test_session=2, n_aux=3) == iemocap_loso_split(
        IEMOCAP, test_session=2, n_aux=3, seed=0
    )
