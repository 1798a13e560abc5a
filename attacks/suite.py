"""One call for the CLI and for scripts: open a run, check it, rebuild its data, run the attacks asked for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from privfl.attacks.gender import GenderAttackConfig, gender_attack, gender_preflight
from privfl.attacks.membership import MembershipAttackConfig, membership_attack, membership_preflight
from privfl.attacks.observe import ObservedRun
from privfl.attacks.result import AttackResult
from privfl.data.dataset import prepare
from privfl.errors import ConfigError

ATTACKS = ("gender", "membership")

Progress = Callable[[str, int, int], None]


def run_attacks(
    run_path: Path,
    which: tuple[str, ...] = ATTACKS,
    *,
    gender: GenderAttackConfig | None = None,
    membership: MembershipAttackConfig | None = None,
    progress: Progress | None = None,
) -> tuple[ObservedRun, list[AttackResult]]:
    """Run the named attacks on a finished run; raises before computing anything if the input is unusable.

    Reads only: the run directory is never written here (see attacks.report.write_report).
    """
    unknown = [w for w in which if w not in ATTACKS]
    if unknown or not which:
        raise ConfigError(f"attack(s) {unknown or '(none)'} not among {', '.join(ATTACKS)}")
    gender = (gender or GenderAttackConfig()).validate()
    membership = (membership or MembershipAttackConfig()).validate()
    need_updates = "gender" in which or "alignment" in membership.methods
    observed = ObservedRun.open(Path(run_path), need_updates=need_updates)
    if "gender" in which:
        observed.select_rounds(gender.rounds, gender.max_rounds)  # bad --rounds fail before the data is built
    if "membership" in which and "alignment" in membership.methods:
        observed.select_rounds(membership.rounds, membership.max_rounds)
    data = prepare(observed.config, progress)
    # all checks of all attacks first: `attack all` must not fail in membership after minutes of gender
    if "gender" in which:
        gender_preflight(observed, data, gender)
    if "membership" in which:
        membership_preflight(observed, data, membership)
    results = []
    if "gender" in which:
        results.append(gender_attack(observed, data, gender, progress))
    if "membership" in which:
        results.append(membership_attack(observed, data, membership, progress))
    return observed, results
