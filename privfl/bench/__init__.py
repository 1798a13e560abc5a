"""Benchmarks as library calls: the privacy-utility grid and the paper's Figure 2.

    from privfl.bench import default_grid, run_privacy_utility
    doc = run_privacy_utility(default_grid(), Path("bench/pu"))      # results.{csv,json,md} + plots

The `privfl bench` commands (privfl.bench.cli) and benchmarks/*.py are thin wrappers over these.
"""

from privfl.bench.grid import DEFENCES, AttackPlan, Grid, GridPoint, default_grid, defence_of
from privfl.bench.paper_fig2 import Fig2Setting, fig2_settings, paper_base, run_paper_fig2
from privfl.bench.privacy_utility import run_privacy_utility
from privfl.bench.reporter import Reporter

__all__ = [
    "DEFENCES",
    "AttackPlan",
    "Fig2Setting",
    "Grid",
    "GridPoint",
    "Reporter",
    "default_grid",
    "defence_of",
    "fig2_settings",
    "paper_base",
    "run_paper_fig2",
    "run_privacy_utility",
]
