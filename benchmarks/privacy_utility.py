"""What each defence costs in utility and removes in attack success, for one corpus and model.

Same as `privfl bench privacy-utility` (privfl.bench.privacy_utility does the work):

    python benchmarks/privacy_utility.py --out bench/pu      # quick default grid, ~15 min on 2 cores
    python benchmarks/privacy_utility.py --config benchmarks/configs/iemocap_lstm.toml --data-dir ~/IEMOCAP

Writes results.{csv,json,md}, runs.csv and three plots into --out; prints the per-stage wall time
and the results table last.
"""

from __future__ import annotations

import sys

from privfl.bench.cli import bench

if __name__ == "__main__":  # the synthetic corpus is written by worker processes, which re-import this file
    bench.main(args=["privacy-utility", *sys.argv[1:]], prog_name="privfl bench")
