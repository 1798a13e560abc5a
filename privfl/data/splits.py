"""Speaker-disjoint splits: which speakers train, validate, test, or feed an attacker (aux).

Every split is a pure function of the corpus's speakers and a seed. `aux` speakers are reserved
for an attacker's auxiliary data and never appear in training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from privfl.data.records import Corpus
from privfl.errors import ConfigError, DataError

ROLES: tuple[str, ...] = ("train", "val", "test", "aux")

_IEMOCAP_SPEAKER = re.compile(r"^Ses0([1-5])([FM])$")


@dataclass(frozen=True)
class Split:
    """Speaker ids per role; the roles are disjoint."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    aux: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for role in ROLES:
            speakers = getattr(self, role)
            if isinstance(speakers, str):
                raise DataError(
                    f"split role {role} must be a list of speaker ids, got the string {speakers!r}"
                )
            object.__setattr__(self, role, tuple(speakers))
            for speaker in getattr(self, role):
                if speaker in seen:
                    raise DataError(
                        f"speaker {speaker!r} is in both the {seen[speaker]} and {role} roles; "
                        "each speaker may have one role"
                    )
                seen[speaker] = role

    def roles(self) -> dict[str, str]:
        """Speaker id -> role."""
        return {s: role for role in ROLES for s in getattr(self, role)}

    def role_of(self, speaker: str) -> str:
        """The role ("train", "val", "test" or "aux") of `speaker`; DataError if it has none."""
        for role in ROLES:
            if speaker in getattr(self, role):
                return role
        raise DataError(
            f"speaker {speaker!r} is in no role of this split; it holds "
            f"{', '.join(f'{r}: {len(getattr(self, r))}' for r in ROLES)} speakers"
        )

    def speakers(self) -> list[str]:
        """Every speaker in the split, sorted."""
        return sorted(self.roles())

    def subset(self, corpus: Corpus, role: str) -> Corpus:
        """The utterances of `corpus` whose speaker has `role`."""
        if role not in ROLES:
            raise ConfigError(f"unknown split role {role!r}; expected one of {', '.join(ROLES)}")
        keep = set(getattr(self, role))
        return corpus.subset(lambda u: u.speaker in keep)

    def as_dict(self) -> dict[str, list[str]]:
        """Plain lists per role, for JSON."""
        return {role: list(getattr(self, role)) for role in ROLES}


def speaker_split(corpus: Corpus, *, n_val: int, n_test: int, n_aux: int, seed: int) -> Split:
    """Speaker-disjoint split: n_val, n_test and n_aux speakers drawn with default_rng(seed), the rest train.

    Within each held-out role genders alternate, so female and male counts differ by at most one
    while both genders have speakers left; speakers of unknown gender are used only after that.
    """
    counts = {
        "n_val": _count("n_val", n_val),
        "n_test": _count("n_test", n_test),
        "n_aux": _count("n_aux", n_aux),
    }
    speakers = corpus.speakers()
    held = sum(counts.values())
    if held >= len(speakers):
        raise DataError(
            f"corpus {corpus.name!r} has {len(speakers)} speakers; n_val={n_val} + n_test={n_test} "
            f"+ n_aux={n_aux} = {held} leaves none for training; "
            f"ask for at most {max(len(speakers) - 1, 0)} held-out speakers, e.g. "
            "--set data.aux_speakers=0 --set data.val_speakers=1 --set data.test_speakers=1"
        )
    rng = np.random.default_rng(_seed(seed))
    pools = _gender_pools(corpus, speakers, rng)
    val = _take_balanced(pools, n_val, rng)
    test = _take_balanced(pools, n_test, rng)
    aux = _take_balanced(pools, n_aux, rng)
    train = sorted(s for pool in pools.values() for s in pool)
    return Split(train=tuple(train), val=tuple(sorted(val)), test=tuple(sorted(test)), aux=tuple(sorted(aux)))


def speaker_folds(corpus: Corpus, k: int, seed: int) -> list[tuple[str, ...]]:
    """k disjoint groups of test speakers covering every speaker once, drawn with default_rng(seed).

    Each gender's speakers are shuffled, then females, males and unknowns are dealt round-robin,
    so fold sizes differ by at most one and each fold's genders are as even as the counts allow
    (RAVDESS, 12 F + 12 M, k=6: two of each per fold).
    """
    speakers = corpus.speakers()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"k-fold speaker CV needs k >= 2 folds, got {k!r}")
    if k > len(speakers):
        raise DataError(
            f"corpus {corpus.name!r} has {len(speakers)} speakers, too few for {k} folds; "
            f"use --folds {len(speakers)} (leave one speaker out) or fewer"
        )
    rng = np.random.default_rng(_seed(seed))
    pools = _gender_pools(corpus, speakers, rng)
    dealt = pools["female"] + pools["male"] + pools["unknown"]
    return [tuple(sorted(dealt[i::k])) for i in range(k)]


def kfold_split(corpus: Corpus, *, k: int, fold: int, n_val: int, n_aux: int = 0, seed: int = 0) -> Split:
    """Fold `fold` (1..k) of speaker_folds: its speakers test; n_val and n_aux speakers (gender
    balanced, drawn with default_rng([seed, fold])) come from the other folds, the rest train."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 1 <= fold <= k:
        raise ConfigError(f"fold must be in 1..{k}, got {fold!r}")
    test = speaker_folds(corpus, k, seed)[fold - 1]
    rest = [s for s in corpus.speakers() if s not in test]
    n_val, n_aux = _count("n_val", n_val), _count("n_aux", n_aux)
    if n_val + n_aux >= len(rest):
        raise DataError(
            f"fold {fold} of {k} leaves {len(rest)} speakers outside its test group; n_val={n_val} + "
            f"n_aux={n_aux} would leave none for training; lower data.val_speakers or data.aux_speakers"
        )
    rng = np.random.default_rng([_seed(seed), int(fold)])
    pools = _gender_pools(corpus, rest, rng)
    val = _take_balanced(pools, n_val, rng)
    aux = _take_balanced(pools, n_aux, rng)
    train = sorted(s for pool in pools.values() for s in pool)
    return Split(train=tuple(train), val=tuple(sorted(val)), test=test, aux=tuple(sorted(aux)))


def manifest_split(corpus: Corpus, *, n_aux: int = 0, seed: int = 0) -> Split:
    """Roles from the corpus's own split column (Utterance.split); every speaker needs one role.

    n_aux training speakers (gender balanced, drawn with default_rng(seed)) become aux.
    """
    roles: dict[str, set[str]] = {}
    for u in corpus.utterances:
        roles.setdefault(u.speaker, set()).add(u.split)
    for speaker, found in sorted(roles.items()):
        if "" in found or len(found) > 1:
            what = "no split value" if "" in found else f"several splits ({', '.join(sorted(found))})"
            raise DataError(
                f"{corpus.name}: speaker {speaker!r} has {what}; --split manifest needs one split per "
                "speaker (train, validation or test) so no speaker crosses roles; or use --split speaker"
            )
    by_role = {r: sorted(s for s, f in roles.items() if r in f) for r in ("train", "val", "test")}
    empty = [r for r, s in by_role.items() if not s]
    if empty:
        raise DataError(
            f"{corpus.name}: the split column gives no speaker the role(s) {', '.join(empty)}; "
            "each of train, validation and test needs at least one speaker"
        )
    n_aux = _count("n_aux", n_aux)
    if n_aux >= len(by_role["train"]):
        raise DataError(
            f"{corpus.name}: {len(by_role['train'])} training speakers; n_aux={n_aux} would leave none; "
            "set data.aux_speakers lower"
        )
    rng = np.random.default_rng(_seed(seed))
    pools = _gender_pools(corpus, by_role["train"], rng)
    aux = _take_balanced(pools, n_aux, rng)
    train = sorted(s for pool in pools.values() for s in pool)
    return Split(tuple(train), tuple(by_role["val"]), tuple(by_role["test"]), tuple(sorted(aux)))


def iemocap_loso_split(
    corpus: Corpus, *, test_session: int, test_gender: str = "female", n_aux: int = 0, seed: int = 0
) -> Split:
    """Leave one IEMOCAP session out: its `test_gender` speaker tests, the other validates.

    The other sessions' speakers train; n_aux of them (gender balanced, drawn with
    default_rng(seed)) are moved from training to aux.
    """
    if isinstance(test_session, bool) or not isinstance(test_session, int) or not 1 <= test_session <= 5:
        raise ConfigError(f"test_session must be an IEMOCAP session number 1-5, got {test_session!r}")
    if test_gender not in ("female", "male"):
        raise ConfigError(f"test_gender must be 'female' or 'male', got {test_gender!r}")
    n_aux = _count("n_aux", n_aux)
    speakers = corpus.speakers()
    foreign = [s for s in speakers if not _IEMOCAP_SPEAKER.match(s)]
    if foreign:
        raise DataError(
            f"corpus {corpus.name!r} has speakers that are not IEMOCAP's (e.g. {foreign[0]!r}; "
            "expected 'Ses01F'..'Ses05M'); use speaker_split for other corpora"
        )
    tag = f"Ses{test_session:02d}"
    held_out = [s for s in speakers if s.startswith(tag)]
    if len(held_out) != 2:
        raise DataError(
            f"IEMOCAP session {test_session} has {len(held_out)} speaker(s) in the corpus "
            f"({', '.join(held_out) or 'none'}); the split needs both {tag}F and {tag}M"
        )
    test = f"{tag}{'F' if test_gender == 'female' else 'M'}"
    val = held_out[0] if held_out[1] == test else held_out[1]
    rest = [s for s in speakers if s not in held_out]
    if n_aux >= len(rest):
        raise DataError(
            f"IEMOCAP split has {len(rest)} training speakers; n_aux={n_aux} would leave none "
            f"for training; ask for at most {max(len(rest) - 1, 0)}"
        )
    rng = np.random.default_rng(_seed(seed))
    pools = _gender_pools(corpus, rest, rng)
    aux = _take_balanced(pools, n_aux, rng)
    train = sorted(s for pool in pools.values() for s in pool)
    return Split(train=tuple(train), val=(val,), test=(test,), aux=tuple(sorted(aux)))


def iemocap_paper_split(
    corpus: Corpus, *, test_speaker: str = "Ses05F", n_aux: int = 0, seed: int = 0
) -> Split:
    """The paper split: sessions 1-4 train; session 5: `test_speaker` tests, the other speaker validates."""
    if test_speaker not in ("Ses05F", "Ses05M"):
        raise ConfigError(
            f"test_speaker must be 'Ses05F' or 'Ses05M' for the paper split, got {test_speaker!r}; "
            "use iemocap_loso_split to hold out another session"
        )
    gender = "female" if test_speaker.endswith("F") else "male"
    return iemocap_loso_split(corpus, test_session=5, test_gender=gender, n_aux=n_aux, seed=seed)


def default_split(corpus: Corpus, *, n_aux: int = 0, seed: int = 0) -> Split:
    """The usual split for `corpus`.

    IEMOCAP: the paper split; other corpora: speaker_split with 10% of the speakers (at least 1) each
    for val and test.
    """
    if corpus.name == "iemocap":
        return iemocap_paper_split(corpus, n_aux=n_aux, seed=seed)
    held = max(1, round(0.1 * len(corpus.speakers())))
    return speaker_split(corpus, n_val=held, n_test=held, n_aux=n_aux, seed=seed)


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(value)


def _seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


def _gender_pools(corpus: Corpus, speakers: list[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Speakers grouped by gender, each group in a seeded random order (taken from the end)."""
    gender = corpus.gender_of()
    pools: dict[str, list[str]] = {"female": [], "male": [], "unknown": []}
    for speaker in sorted(speakers):
        g = gender.get(speaker, "unknown")
        pools[g if g in pools else "unknown"].append(speaker)
    return {g: [pool[i] for i in rng.permutation(len(pool))] for g, pool in pools.items()}


def _take_balanced(pools: dict[str, list[str]], n: int, rng: np.random.Generator) -> list[str]:
    """Take n speakers out of `pools`, alternating female/male (random first) while both last."""
    order = ("female", "male") if rng.integers(2) == 0 else ("male", "female")
    taken = {"female": 0, "male": 0}
    picked: list[str] = []
    for _ in range(n):
        known = [g for g in order if pools[g]]
        if known:
            gender = min(known, key=lambda g: (taken[g], order.index(g)))
            taken[gender] += 1
        else:
            gender = "unknown"
        picked.append(pools[gender].pop())
    return picked
