"""Latif et al. 2020, Figure 2: FedAvg test UAR over rounds for CNN and LSTM, K, B, E settings.

Same as `privfl bench paper-fig2` (privfl.bench.paper_fig2 does the work):

    python benchmarks/paper_fig2.py                     # built-in corpus, 20 rounds, 8 curves
    python benchmarks/paper_fig2.py --dataset iemocap --data-dir ~/IEMOCAP --full    # 200 rounds

Writes fig2.png, fig2.md (final and best UAR beside the paper's 54.8 %), fig2.csv and fig2.json;
prints the per-stage wall time and the table last.
"""

from __future__ import annotations

import sys

from privfl.bench.cli import bench

if __name__ == "__main__":  # the synthetic corpus is written by worker processes, which re-import this file
    bench.main(args=["paper-fig2", *sys.argv[1:]], prog_name="privfl bench")
