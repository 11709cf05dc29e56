"""`CompressJob`: the dense baseline and the QASSO compression of ``geta compress``, resumable.

The job is a sequence of epochs in two phases, ``dense`` then ``compress``. After every epoch
(and when asked to stop, at the next batch boundary) the whole run state is checkpointed
atomically (`geta.cli.checkpoint`); a resumed job rebuilds the model, plan and optimizer, loads
the state and continues from the same batch, so it ends with exactly the same numbers as an
uninterrupted run. What each phase trains with (optimizers, the prepared plan and its QASSO,
the teacher, the learning rates) is built by `geta.cli.phases`. Progress goes to a `Reporter`;
this module prints nothing itself.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

import geta
from geta.cli import phases
from geta.cli.checkpoint import rng_state, save_state, set_rng_state, state_path
from geta.cli.errors import CliError
from geta.cli.options import STAGE_NAMES
from geta.cli.phases import CALIBRATION_SAMPLES
from geta.cli.progress import RunProgress, mean_bits, metrics_text
from geta.cli.quiet import quiet_capture
from geta.cli.restore import load_dense_checkpoint, restore
from geta.cli.runstate import RunState
from geta.optim.finite import NonFiniteError
from geta.recipes import (
    DataBundle,
    EpochStats,
    Task,
    build_model,
    cosine_lr,
    evaluate,
    load_run_data,
    train_epoch,
)

__all__ = [
    "CompressJob",
    "Interrupted",
    "JobResult",
    "Reporter",
    "RunState",
    "CALIBRATION_SAMPLES",
]

_COMPRESS_EPOCH_SEED = 100_000  # compression epochs shuffle with seeds apart from dense ones
_RECALIBRATE_SEED = 200_000  # the (fixed) order of the batches that re-estimate BatchNorm statistics


class Reporter(Protocol):
    """Receives progress; the CLI shows it with tqdm."""

    def run_start(self, progress: RunProgress) -> None: ...
    def epoch_start(
        self, phase: str, epoch: int, epochs: int, stage: str, batches: int, done: int
    ) -> None: ...
    def batch(self, stats: EpochStats, extra: dict[str, float]) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...


class Interrupted(Exception):
    """The job stopped on request after writing a resumable checkpoint."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


@dataclass
class JobResult:
    """A finished job: the trained model with its plan, the data and the final run state."""

    model: nn.Module
    plan: geta.Plan
    data: DataBundle
    state: RunState
    device: torch.device


class CompressJob:
    """Runs (or resumes) the dense and compression phases of one ``geta compress`` run."""

    def __init__(
        self,
        out: Path,
        reporter: Reporter,
        *,
        stop: Callable[[], bool],
        stop_after_epochs: int | None = None,
        started: float | None = None,
    ) -> None:
        """``started`` is the ``time.perf_counter()`` this process began the run at (default: now)."""
        self.out, self.reporter, self.stop = out, reporter, stop
        self.stop_after_epochs = stop_after_epochs
        self.started = time.perf_counter() if started is None else started
        self._wall_before = 0.0  # wall time of the earlier processes of a resumed run
        self._epochs_run = 0
        # what `run` builds: the device, data and model first, the plan and teacher with QASSO
        self.device = torch.device("cpu")
        self.data: DataBundle | None = None
        self.model: nn.Module | None = None
        self.progress: RunProgress | None = None
        self.plan: geta.Plan | None = None
        self.teacher: nn.Module | None = None
        self._compiled: tuple[nn.Module, nn.Module] | None = None  # --compile: (model, its wrapper)
        self._warned: set[str] = set()  # warnings given (each once)

    def wall_seconds(self) -> float:
        """Wall-clock time of the run so far, over every process that worked on it."""
        return self._wall_before + time.perf_counter() - self.started

    def run(self, state: RunState) -> JobResult:
        """Advance ``state`` to the end of the compression phase (raises `Interrupted` on stop)."""
        o = state.options
        self._wall_before = state.wall_seconds
        resumed = state.rng is not None  # only a checkpoint holds RNG states
        if not resumed:
            phases.seed_everything(o.seed)
        self.device = torch.device(o.device)
        self.data = load_run_data(o.model, o.data, seed=o.seed, seq_len=o.seq_len)
        self.model = build_model(o.model, self.data, seed=o.seed).to(self.device)
        if state.phase == "dense" and o.dense_checkpoint:
            load_dense_checkpoint(o.dense_checkpoint, self.model)
        self._check_position(state)
        if state.phase == "dense" and o.target_bops is not None:
            # before the dense phase: an infeasible budget fails in seconds
            phases.check_budget(o, self.data, self.device, self.model)
        self._announce(state, resumed=resumed)  # after the inputs are checked: errors come alone
        dense_epochs = 0 if o.dense_checkpoint else o.training().dense_epochs
        self.progress = RunProgress(dense_epochs, sum(o.stage_epochs()), self.data.num_batches(o.batch_size),
                                    phase=state.phase, epoch=state.epoch, batch=state.batch)  # fmt: skip
        self.reporter.run_start(self.progress)
        if state.phase == "dense":
            self._dense(state)
        else:
            assert state.dense is not None
            restore("dense", lambda: self.model.load_state_dict(state.dense["state"]), self.out)
        plan, opt = self._prepare(state)
        self._epochs(state, opt, sum(o.stage_epochs()), lambda: opt.stage.value, phases.qasso_lr(o, opt))
        return JobResult(self.model, plan, self.data, state, self.device)

    def _check_position(self, state: RunState) -> None:
        """A checkpoint's epoch and batch must lie inside its phase (else it is damaged)."""
        o = state.options
        spe = self.data.num_batches(o.batch_size)
        epochs = o.training().dense_epochs if state.phase == "dense" else sum(o.stage_epochs())
        for name, value, limit in (("epoch", state.epoch, epochs), ("batch", state.batch, spe - 1)):
            if value > limit or (name == "batch" and value and state.epoch >= epochs):
                raise CliError(
                    f"checkpoint {state_path(self.out)}: field {name!r} is {value}, beyond the {state.phase} "
                    f"phase ({epochs} epochs of {spe} batches); the checkpoint is damaged: restore it, or "
                    "start over with --overwrite"
                )

    def _announce(self, state: RunState, *, resumed: bool) -> None:
        """Note the stage split (and where a resumed run goes on); warn about stages left empty."""
        o = state.options
        split = ", ".join(f"{name} {n}" for name, n in zip(STAGE_NAMES, o.stage_epochs()))
        self.reporter.note(f"compression epochs: {split} ({sum(o.stage_epochs())} in total)")
        empty = o.empty_stages()
        if empty:
            self.reporter.warning(
                f"--epochs {o.epochs} leaves no epoch for {' and '.join(empty)}; "
                f"pass --epochs {len(STAGE_NAMES)} or more to run every stage"
            )
        if resumed:
            phase = "dense training" if state.phase == "dense" else "compression"
            batch = f", batch {state.batch + 1}" if state.batch else ""
            self.reporter.note(f"resuming at epoch {state.epoch + 1} of the {phase}{batch}")

    # -- phases -----------------------------------------------------------------------------------

    def _dense(self, state: RunState) -> None:
        o = state.options
        lr, _ = o.learning_rates()
        dense_epochs = o.training().dense_epochs
        if not o.dense_checkpoint:  # (a dense checkpoint is loaded in `run`)
            opt = phases.dense_optimizer(o, self.model, lr)
            self._restore_all(state, opt)
            spe = self.data.num_batches(o.batch_size)

            def lr_at(stats: EpochStats) -> float:  # cosine over all dense steps, one epoch of warm-up
                return cosine_lr(state.epoch * spe + stats.batches, dense_epochs * spe, lr, warmup=spe)

            self._epochs(state, opt, dense_epochs, lambda: "dense", lr_at)
        metrics = evaluate(self.model, self.data, batch_size=256, device=self.device)
        self.reporter.note(f"dense model: {metrics_text(self.data, metrics)}")
        dense_sd = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        state.dense = {"state": dense_sd, "accuracy": metrics.accuracy, "loss": metrics.loss}
        state.phase, state.epoch, state.batch, state.partial = "compress", 0, 0, {}
        state.model = state.optimizer = None
        self._save(state, None)

    def _prepare(self, state: RunState) -> tuple[geta.Plan, geta.QASSO]:
        """Prepare the dense model and build QASSO; load the checkpoint's state if there is one."""
        if state.options.training().distill > 0:
            assert state.dense is not None
            self.teacher = phases.teacher(self.model, state.dense["state"])
        else:
            self.teacher = None
        plan, opt = phases.build_compression(state.options, self.data, self.device, self.model)
        self._restore_all(state, opt)  # `prepare` may draw random numbers: start from the checkpoint's
        self.plan = plan
        self.reporter.note(phases.prepared_note(plan, opt))
        return plan, opt

    def _restore_all(self, state: RunState, opt: torch.optim.Optimizer) -> None:
        """Load the checkpoint's model, optimizer and RNG states (those it has)."""
        if state.model is not None and state.optimizer is not None:
            restore("model", lambda: self.model.load_state_dict(state.model), self.out)
            restore("optimizer", lambda: opt.load_state_dict(state.optimizer), self.out)
        if state.rng is not None:
            restore("rng", lambda: set_rng_state(state.rng), self.out)

    # -- the epoch loop -----------------------------------------------------------------------------

    def _epochs(
        self,
        state: RunState,
        opt: torch.optim.Optimizer,
        epochs: int,
        stage: Callable[[], str],
        lr_at: Callable[[EpochStats], float],
    ) -> None:
        """Run the phase's remaining epochs; checkpoint after each (and when stopped)."""
        spe = self.data.num_batches(state.options.batch_size)
        while state.epoch < epochs:
            name = stage()
            self.reporter.epoch_start(state.phase, state.epoch, epochs, name, spe, state.batch)
            t0 = time.perf_counter()
            stats = self._train(state, opt, lr_at)
            if stats.batches < spe:  # stopped at a batch boundary
                state.seconds += time.perf_counter() - t0
                state.batch, state.partial = stats.batches, stats.to_dict()
                self._save(state, opt)
                raise Interrupted(f"{state.phase} epoch {state.epoch + 1}, batch {stats.batches}")
            if state.phase == "compress":
                self._recalibrate_norms(state)
            metrics = evaluate(self.model, self.data, batch_size=256, device=self.device)
            state.seconds += time.perf_counter() - t0
            record = {"phase": state.phase, "epoch": state.epoch, "stage": name, "loss": stats.loss,
                      "train_accuracy": stats.accuracy, "test_accuracy": metrics.accuracy,
                      "test_loss": metrics.loss, "lr": opt.param_groups[0]["lr"],
                      **self._extra(), **self._costs()}  # fmt: skip
            if self.data.task is Task.LM:
                record["test_perplexity"] = metrics.perplexity
            state.history.append(record)
            self.reporter.epoch_end(record)
            state.epoch, state.batch, state.partial = state.epoch + 1, 0, {}
            self._save(state, opt)
            self._epochs_run += 1
            if self.stop_after_epochs is not None and self._epochs_run >= self.stop_after_epochs:
                raise Interrupted(f"{state.phase} epoch {state.epoch} (--stop-after-epochs)")

    def _recalibrate_norms(self, state: RunState) -> None:
        """Re-estimate the BatchNorm statistics (``--recalibrate-norms N``) on the first N training
        batches of a fixed order, apart from the training shuffles (`geta.recalibrate_norms`).

        The forgetting, the commits and the bit changes of QASSO move the activations faster
        than the running statistics follow; the evaluation at an epoch's end (and the convert
        after the last one) would otherwise normalise with stale ones. No weight changes and
        no random number is drawn: the training itself, and a resumed run, are unaffected.
        """
        o = state.options
        if o.recalibrate_norms <= 0:
            return
        order = self.data.batches(o.batch_size, seed=o.seed, epoch=_RECALIBRATE_SEED)
        inputs = (x.to(self.device) for x, _ in order)
        geta.recalibrate_norms(self.model, inputs, max_batches=o.recalibrate_norms)

    def _train(
        self, state: RunState, opt: torch.optim.Optimizer, lr_at: Callable[[EpochStats], float]
    ) -> EpochStats:
        """Train the current epoch from the checkpoint's batch (and running sums) on."""
        o = state.options
        stats = EpochStats(**state.partial) if state.batch else EpochStats()
        offset = _COMPRESS_EPOCH_SEED if state.phase == "compress" else 0
        try:
            return self._train_epoch(state, opt, lr_at, stats, offset)
        except NonFiniteError as exc:
            raise CliError(
                f"{exc}; lower --lr (now {o.learning_rates()[1]:g}) or --lr-quant ({o.lr_quant:g}), or set "
                "--grad-clip (the checkpoint of the last finished epoch, if any, is kept)"
            ) from None

    def _train_epoch(
        self,
        state: RunState,
        opt: torch.optim.Optimizer,
        lr_at: Callable[[EpochStats], float],
        stats: EpochStats,
        offset: int,
    ) -> EpochStats:
        o = state.options
        model = self.model
        if o.compile:  # one wrapper per model object; dynamo recompiles when prepare changes it
            if self._compiled is None or self._compiled[0] is not self.model:
                self._compiled = (self.model, torch.compile(self.model))
            model = self._compiled[1]
        compressing = state.phase == "compress"
        return train_epoch(
            model, self.data, opt, batch_size=o.batch_size, seed=o.seed, epoch=offset + state.epoch,
            device=self.device, lr=functools.partial(lr_at, stats), start=state.batch, stats=stats,
            on_batch=self._on_batch(state), stop=self.stop,
            teacher=self.teacher if compressing else None,
            distill_weight=o.training().distill, clip_norm=o.training().clip_norm,
        )  # fmt: skip

    def _extra(self) -> dict[str, float]:
        """Group sparsity and mean bit widths of the compression phase (empty before it)."""
        plan = self.plan
        if plan is None:
            return {}
        return {"sparsity": plan.group_sparsity(), **mean_bits(plan)}

    def _costs(self) -> dict[str, float]:
        """Relative BOPs (W+A) of the model as it would convert now (compression phase only).

        A converted copy is measured on one example against the original model's counts; the
        RNG states are left as they were, so a resumed run stays bit-for-bit the same. A model
        geta cannot convert or measure now (a `geta.GetaError`) is warned about once and its
        epoch goes without the number; any other exception is a bug and propagates.
        """
        if self.plan is None or self.model is None or self.data is None:
            return {}
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]), quiet_capture(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a measurement, not the user's business
            try:
                small = geta.convert(self.model, self.plan, verify=False).eval()
                rep = geta.report(small, tuple(t.to(self.device) for t in self.data.example(1)))
            except geta.GetaError as exc:
                self._warn_once(f"relative BOPs not measured this epoch ({exc}); the final convert retries")
                return {}
        if self.progress is not None:
            self.progress.measured(time.perf_counter() - t0)  # the finish's ETA scales with it
        return {"relative_bops": rep.relative_bops}

    def _warn_once(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            self.reporter.warning(text)

    def _on_batch(self, state: RunState) -> Callable[[EpochStats], None]:
        extra: dict[str, float] = self._extra()
        flag = "--dense-lr" if state.phase == "dense" else "--lr"
        lr = state.options.learning_rates()[0 if state.phase == "dense" else 1]

        def on_batch(stats: EpochStats) -> None:
            if not math.isfinite(stats.loss_sum):  # stop at the step, before a checkpoint keeps NaN
                raise CliError(
                    f"{state.phase} training diverged at epoch {state.epoch + 1}, batch {stats.batches} "
                    f"(loss {stats.loss_sum / max(stats.batches, 1)}); lower {flag} (now {lr:g}) or set "
                    "--clip-norm (the checkpoint of the last finished epoch, if any, is kept)"
                )
            if stats.batches % 10 == 0:
                extra.update(self._extra())
            self.reporter.batch(stats, extra)

        return on_batch

    def _save(self, state: RunState, opt: torch.optim.Optimizer | None) -> None:
        state.model = self.model.state_dict() if opt is not None else None
        state.optimizer = opt.state_dict() if opt is not None else None
        state.rng = rng_state()
        state.wall_seconds = self.wall_seconds()
        save_state(state.to_checkpoint(), state_path(self.out))
