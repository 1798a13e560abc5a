"""Privacy attacks on recorded federated runs: gender inference and membership inference.

Importable without the CLI:

    from privfl.attacks import run_attacks, write_report
    observed, results = run_attacks("runs/plain")          # gender + membership
    write_report("runs/plain/attacks", observed, results)     # attack.json + roc.png

Threat model and measured results: docs/attacks.md.
"""

from privfl.attacks.gender import GenderAttackConfig, gender_attack
from privfl.attacks.membership import MembershipAttackConfig, membership_attack
from privfl.attacks.observe import ObservedRun
from privfl.attacks.report import render_table, write_report
from privfl.attacks.result import AttackResult, AttackRow
from privfl.attacks.suite import ATTACKS, run_attacks

__all__ = [
    "ATTACKS",
    "AttackResult",
    "AttackRow",
    "GenderAttackConfig",
    "MembershipAttackConfig",
    "ObservedRun",
    "gender_attack",
    "membership_attack",
    "render_table",
    "run_attacks",
    "write_report",
]
