"""`privfl train` as a library call: config -> prepared data -> federation -> run directory.

`Session` is one run's bookkeeping; `train` builds it and hands it to an engine (the built-in
loop here, or `privfl.fl.engines`), which only ever sees it through `engines.Session`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from privfl import __version__
from privfl.canaries import CanarySecrets, draw_canaries
from privfl.config import ExperimentConfig, canary_kind, canary_norm, flatten
from privfl.data.dataset import Stage, prepare
from privfl.errors import ConfigError, RunError
from privfl.evaluate import Evaluator
from privfl.fl.components import build_components
from privfl.fl.engines.session import run_rounds
from privfl.fl.federation import Federation, RoundOutcome
from privfl.models import build_model, count_parameters, initial_weights, set_flat
from privfl.plots import uar_curves
from privfl.runs import RunDir

log = logging.getLogger(__name__)

RoundCallback = Callable[[dict], None]


def default_out(cfg: ExperimentConfig) -> Path:
    """runs/<mode>-<model>-<dataset>-s<seed>-<time>: a fresh, readable name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.train.mode}-{cfg.model.name}-{cfg.data.dataset}-s{cfg.seed}-{stamp}"


def check_resumable(saved: ExperimentConfig, given: ExperimentConfig) -> None:
    """A resumed run may only extend its rounds; anything else would mix two experiments."""
    a, b = saved.to_dict(), given.to_dict()
    a["train"].pop("rounds"), b["train"].pop("rounds")
    diff = [k for k in sorted(set(flatten(a)) | set(flatten(b))) if flatten(a).get(k) != flatten(b).get(k)]
    if diff:
        raise ConfigError(
            f"--resume: the given config differs from the run's config.toml in {', '.join(diff)}; "
            "resume with the run's own config (only train.rounds may change)"
        )


class Session:
    """One run's bookkeeping, shared by every engine: data, components, run directory, and
    what happens after each round (recording, evaluation, metrics, checkpoint) and at the end.

    The built-in engine drives it with `Federation.run_round`; the Flower engine drives it from
    its ServerApp. Either way the run directory and the numbers are the same.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        out: Path | None = None,
        *,
        resume: Path | None = None,
        overwrite: bool = False,
        on_stage: Stage | None = None,
    ) -> None:
        cfg.validate()
        self.state: dict = {
            "best_val_uar": -1.0,
            "best_round": 0,
            "best_test": None,
            "bytes_up": 0,
            "elapsed_s": 0.0,
        }
        ckpt = None
        if resume is not None:
            run = RunDir.open(resume)
            check_resumable(run.config(), cfg)
            ckpt = run.verify(parameter_count(cfg))  # its files are checked before any data is prepared
            if ckpt is not None and set(ckpt["state"]["loop"]) != set(self.state):
                raise RunError(
                    f"{run.path / 'checkpoint.json'}: state.loop has keys {sorted(ckpt['state']['loop'])}, "
                    f"expected {sorted(self.state)}; the run directory was changed after privfl wrote it, "
                    "retrain it"
                )
        elif out is not None and Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
            RunDir.create(out, cfg, overwrite=False)  # raises the clear "already exists" error
        started = time.perf_counter()
        self.cfg = cfg
        self.data = prepare(cfg, on_stage)
        self.canaries = self._canaries(resume)
        self.components = build_components(cfg, self.data, self.canaries)
        self.evaluator = Evaluator(cfg, self.data.n_mels)
        self.start_round = 1
        self.weights = initial_weights(cfg.model, self.data.n_mels, cfg.seed)
        if resume is not None:
            if ckpt is not None:
                self.start_round, self.weights = ckpt["round"] + 1, ckpt["weights"]
                self.state.update(ckpt["state"]["loop"])
                if self.components.privacy is not None:
                    self.components.privacy.load_state(ckpt["state"]["privacy"])
                self.components.summation.load_state(ckpt["state"].get("summation", {}))
            run.truncate_metrics(self.start_round - 1)
            cfg.to_toml(run.path / "config.toml")
            (run.path / "summary.json").unlink(missing_ok=True)
        else:
            run = RunDir.create(out or default_out(cfg), cfg, overwrite=overwrite)
        if self.canaries is not None and resume is None:
            self.canaries.save(run.path)  # for the auditor only: never in config, metrics or summary
        run.write_skipped(self.data.corpus.skipped)
        self.run = run
        self.setup_s = time.perf_counter() - started
        self._round_started = time.perf_counter()

    def _canaries(self, resume: Path | None) -> CanarySecrets | None:
        """The run's audit canaries: drawn from OS entropy, or a resumed run's own."""
        cfg = self.cfg
        if not cfg.audit.canaries:
            return None
        if resume is not None:
            return CanarySecrets.load(resume)
        n_params = parameter_count(cfg)
        return draw_canaries(
            canary_kind(cfg), cfg.audit.canaries, n_params, len(self.data.clients), canary_norm(cfg)
        )

    def rounds(self) -> range:
        """The rounds still to run."""
        return range(self.start_round, self.cfg.train.rounds + 1)

    def federation(self) -> Federation:
        """The built-in in-process engine over this session's clients and components."""
        c = self.components
        return Federation(c.trainer, self.data.clients, c.sampler, c.policy, c.summation)

    def begin_round(self) -> None:
        self._round_started = time.perf_counter()

    def end_round(self, r: int, outcome: RoundOutcome) -> dict:
        """Record, evaluate, log and checkpoint round r; returns its metrics row."""
        cfg, state = self.cfg, self.state
        if cfg.train.record_updates:
            self.run.record_updates(r, self.weights, outcome.updates, self.data.clients)
        self.weights = outcome.weights
        stats = dict(outcome.stats)
        bytes_per_client = stats.pop("bytes_per_client", 4 * self.weights.shape[0] + 8)
        state["bytes_up"] += int(bytes_per_client * len(outcome.selected))
        row: dict = {"round": r}
        # DP clients report no loss or sample count (privfl.fl.dp.disclosed): then no train_loss
        reported = [u for u in outcome.updates if u.num_samples > 0 and math.isfinite(u.train_loss)]
        if reported:
            n_total = sum(u.num_samples for u in reported)
            row["train_loss"] = sum(u.train_loss * u.num_samples for u in reported) / n_total
        row.update(
            clients=len(outcome.selected),
            bytes_up=int(bytes_per_client * len(outcome.selected)),
            bytes_per_client=bytes_per_client,
            **{k: v for k, v in stats.items() if k != "clients"},
        )
        privacy = self.components.privacy
        if privacy is not None:
            row.update(privacy.round_report(r, outcome))
            # what would reveal the private client sample stays out of the run directory
            row = {k: v for k, v in row.items() if k not in privacy.withheld}
        if r % cfg.train.eval_every == 0 or r == cfg.train.rounds:
            val = self.evaluator.scores(self.weights, self.data.val)
            test = self.evaluator.scores(self.weights, self.data.test)
            row.update(val_uar=val["uar"], val_acc=val["acc"], val_loss=val["loss"])
            row.update(test_uar=test["uar"], test_acc=test["acc"], test_loss=test["loss"])
            if val["uar"] > state["best_val_uar"]:
                state.update(best_val_uar=val["uar"], best_round=r, best_test=test)
        row["seconds"] = time.perf_counter() - self._round_started
        state["elapsed_s"] += row["seconds"]
        self.run.append_metrics(row)
        ckpt_state = {"loop": state, "summation": self.components.summation.state()}
        if privacy is not None:
            ckpt_state["privacy"] = privacy.state()
        self.run.save_checkpoint(r, self.weights, ckpt_state)
        return row

    def close(self) -> None:
        """Release what the components hold open: a key-holder process the CKKS summation started."""
        close = getattr(self.components.summation, "close", None)
        if close is not None:
            close()

    def finish(self, engine: str | None = None) -> dict:
        """Write model.pt, curves.png and (last) summary.json; returns the summary. `engine` names
        what ran the rounds where cfg.train.engine does not (a Flower deployment)."""
        cfg, state, run = self.cfg, self.state, self.run
        model = build_model(cfg.model, self.data.n_mels)
        set_flat(model, self.weights)
        run.save_model(model.state_dict())
        metrics = run.metrics()
        uar_curves(
            metrics, run.path / "curves.png", f"{cfg.train.mode} {cfg.model.name} on {cfg.data.dataset}"
        )
        last_eval = next(m for m in reversed(metrics) if "test_uar" in m)
        privacy = self.components.privacy
        row_keys = {"bytes_up"} - (privacy.withheld if privacy is not None else frozenset())
        best = state["best_test"]
        summary = {
            "privfl_version": __version__,
            "mode": cfg.train.mode,
            "engine": engine or cfg.train.engine,
            "model": cfg.model.name,
            "dataset": cfg.data.dataset,
            "seed": cfg.seed,
            "rounds": cfg.train.rounds,
            "clients": len(self.data.clients),
            "n_params": int(self.weights.shape[0]),
            "corpus": {
                "utterances": len(self.data.corpus.utterances),
                "skipped": len(self.data.corpus.skipped),
                "dropped_labels": dict(self.data.corpus.dropped_labels),
            },
            "split": self.data.split.as_dict(),
            "train_utterances": len(self.data.train),
            "val_utterances": len(self.data.val),
            "test_utterances": len(self.data.test),
            "best_round": state["best_round"],
            "best_val_uar": state["best_val_uar"],
            "test_uar_at_best_val": best["uar"],
            "test_acc_at_best_val": best["acc"],
            "test_confusion_at_best_val": best["confusion"],
            "final_val_uar": last_eval["val_uar"],
            "final_test_uar": last_eval["test_uar"],
            "bytes_up_total": state["bytes_up"] if "bytes_up" in row_keys else None,
            "train_seconds": state["elapsed_s"],
            "setup_seconds": self.setup_s,
            "secure_aggregation": cfg.secure.scheme,
            "run_dir": str(run.path),
        }
        if self.components.privacy is not None:
            summary["privacy"] = self.components.privacy.summary()
        run.write_summary(summary)
        return summary


def train(
    cfg: ExperimentConfig,
    out: Path | None = None,
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    on_round: RoundCallback | None = None,
    on_stage: Stage | None = None,
) -> dict:
    """Run (or resume) one experiment on cfg.train.engine; returns the summary (summary.json)."""
    if cfg.train.engine != "builtin":
        from privfl.fl.engines import check_engine, run_engine

        check_engine(cfg.validate())  # the engine's own requirements fail before any data work
    session = Session(cfg, out, resume=resume, overwrite=overwrite, on_stage=on_stage)
    try:
        if cfg.train.engine != "builtin":
            run_engine(session, on_round)
        else:
            run_rounds(session, session.federation(), on_round)
        return session.finish()
    finally:
        session.close()


def parameter_count(cfg: ExperimentConfig) -> int:
    return count_parameters(build_model(cfg.model, cfg.data.n_mels))
