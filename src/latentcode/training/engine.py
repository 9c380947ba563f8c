"""The one training loop under `train.py`, `train_prior.py` and `train_latent_diffusion.py`.

A script supplies a [`TrainingTask`]: the modules it trains with their optimisers, its batches,
the loss of one micro-batch (its objective), validation and the final save. The [`Engine`]
does everything else, the same for every script:

- the accelerator (one CPU, one GPU or many processes), the output-folder lock (its file is
  removed at a clean finish), lost-process errors (`ddp_timeout`);
- per optimiser step, `gradient_accumulation_steps` micro-batches (gradients synchronised on the
  last one only), gradient clipping, the optimisers, the learning-rate schedule; a step whose
  loss or gradient is NaN/inf on any process is skipped on all of them (what its forward pass
  changed in place is rolled back) and counted, `max_consecutive_nonfinite_steps` in a row stop
  the run before anything is saved from it;
- atomic checkpoints (weights, optimisers, schedule, RNG, the data position and the task's own
  state) and an exact resume that refuses settings that would break the trajectory;
- a step budget (`max_train_steps`) or a wall-clock budget (`max_train_time`, the schedule
  fitted to it and fitted again as the machine's speed changes, see `schedule.TimeBudget`; with
  several processes, all fit from the main process's clock, so that they stop at the same step);
- a progress bar with rate and ETA, a one-line summary at the end, `loss.png`.

A new training script is a `RunConfig` subclass with its options, a task and one call:

    class MyTask(TrainingTask):
        def build(self, engine):              # what is trained, and the training batches
            return [Part("model", model, torch.optim.AdamW(model.parameters()))], batches
        def loss(self, engine, pixels):       # the objective of one micro-batch
            loss = ...
            return loss, {"loss": loss}
        def finish(self, engine, summary):    # save the model; the return value is metrics.json
            return training_report(engine, summary, kind="my-task", metrics={}, num_images=0)

    Engine(config, MyTask(config)).run()
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, broadcast, gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageBatches
from ..reporting import metrics_report, write_metrics_json
from ..threads import set_num_threads
from .checkpointing import (
    LOCK_FILE,
    check_output_dir,
    list_checkpoints,
    load_checkpoint,
    lock_output_dir,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import RunConfig
from .loss_plot import write_loss_plot
from .schedule import RunSchedule, TimeBudget
from .state import (
    NonFiniteLossError,
    check_resume_settings,
    lost_process_errors,
    restore_forward_state,
    resume_settings,
    snapshot_forward_state,
)

logger = logging.getLogger(__name__)


def cpu_mixed_precision(config: RunConfig) -> str:
    """The mixed precision a run on the CPU trains in, said at start. bf16 autocast on a CPU is
    several times slower per step than fp32 (5x for `vqvae_cifar10.yaml` on a 2-core CPU), and fp16
    needs a GPU: a `--config` file's bf16 / fp16 (a GPU preset's setting, not the user's choice)
    falls back to "no" with a warning naming the flag that forces it; bf16 given explicitly
    (flag or caller) is kept, with a warning; fp16 given explicitly is refused."""
    precision = config.mixed_precision
    if precision == "no":
        return precision
    if "mixed_precision" in config.file_keys:
        logger.warning(
            "this run is on the CPU, and the --config file asks for mixed_precision %r, made for GPUs (%s): "
            "training in fp32 (mixed_precision 'no') instead. Pass --mixed_precision bf16 to force bf16 autocast.",
            precision,
            "bf16 autocast is several times slower than fp32 on a CPU" if precision == "bf16" else "fp16 needs one",
        )
        return "no"
    if precision == "fp16":
        raise ValueError(
            "mixed_precision='fp16' needs a CUDA GPU (fp16 autocast with loss scaling); this run is on the "
            "CPU: use 'no' (fp32, the fastest on a CPU) or 'bf16' (CPU autocast)"
        )
    logger.warning(
        "mixed_precision 'bf16' on the CPU: bf16 autocast is often several times slower per step than fp32 on a "
        "CPU; --mixed_precision no trains in fp32"
    )
    return precision


def run_accelerator(config: RunConfig) -> Accelerator:
    """The `Accelerator` of a training script: mixed precision, trackers (`report_to`) logging to
    `output_dir/logging_dir`, the CPU when there is no GPU, collectives that give up after
    `ddp_timeout`. On the CPU, `config.mixed_precision` becomes what [`cpu_mixed_precision`]
    decides (so that checkpoints and metrics.json record the precision trained in)."""
    output_dir = Path(config.output_dir)
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        config.mixed_precision = cpu_mixed_precision(config)
    return Accelerator(
        mixed_precision=config.mixed_precision,
        # Collectives wait at most ddp_timeout for a lost process (see state.lost_process_errors).
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=config.ddp_timeout))],
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
        cpu=not use_cuda,
    )


def tracker_config(config: RunConfig) -> dict:
    """The config flattened to the scalar values trackers accept (`model.KEY` for the model)."""
    flat = {key: value for key, value in config.to_dict().items() if key != "model"}
    flat.update({f"model.{key}": value for key, value in getattr(config, "model", {}).items()})
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in flat.items()}


@dataclass
class Part:
    """A trained module and its optimiser; `scheduled`: its learning rate follows the run's
    schedule (else it keeps the optimiser's own)."""

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduled: bool = True


@dataclass
class TrainingResult:
    """What a run hands back: the final model, unwrapped; the final metrics (main process; empty
    elsewhere); this process's loss per optimiser step in this session."""

    model: nn.Module
    metrics: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


class TrainingTask:
    """What a training script gives the [`Engine`]. `build` and `loss` are required; the other
    hooks default to nothing."""

    def build(self, engine: Engine) -> tuple[list[Part], ImageBatches]:
        """The modules to train (the first is the main one) and the training batches: an
        `ImageBatches`, or anything with its `next_batch`, `state_dict`, `load_state_dict` and
        corrupt-image counters (`training.codes.CodeBatches` for tokenised data)."""
        raise NotImplementedError

    def prepared(self, engine: Engine) -> None:
        """Called once `engine.parts` hold the accelerate-prepared modules and optimisers."""

    def loss(self, engine: Engine, pixels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """`(loss to backpropagate, values to log)` of one micro-batch (pixels `[B, C, H, W]`, or
        what the task's batches give); the logged values include `"loss"`, the objective's value."""
        raise NotImplementedError

    def checkpoint_objects(self) -> list:
        """Objects with `state_dict` / `load_state_dict` saved in every checkpoint (a weight EMA)."""
        return []

    def after_step(self, engine: Engine, finite: bool) -> dict:
        """After each optimiser step (`finite`: it was taken, not skipped); returns values to log."""
        return {}

    def resume_settings(self, engine: Engine) -> dict:
        return resume_settings(engine.config)

    def state(self, engine: Engine) -> tuple[dict, dict]:
        """`(state saved once, state saved per process)` of the task in a checkpoint (JSON / torch)."""
        return {}, {}

    def load_state(self, engine: Engine, trainer_state: dict, process_state: dict) -> None:
        """Restore what [`state`] saved."""

    def validate(self, engine: Engine) -> dict:
        """Main process, every `validation_steps`: metrics (and images) of the model now."""
        return {}

    def finish(self, engine: Engine, summary: dict) -> dict:
        """Main process, at the end: validate, save the final model and card; returns the
        metrics.json report ([`training_report`])."""
        raise NotImplementedError

    def publish(self, engine: Engine) -> None:
        """Main process, after everything is saved: e.g. upload the output folder."""

    def final_model(self, engine: Engine) -> nn.Module:
        """All processes, before `finish`: the model handed back (e.g. with EMA weights copied)."""
        return engine.unwrap(engine.parts[0].module)


class Engine:
    """Runs a [`TrainingTask`] under `config` (a [`RunConfig`]); see the module docstring."""

    def __init__(self, config: RunConfig, task: TrainingTask):
        self.config, self.task = config, task
        self.output_dir = Path(config.output_dir)
        self.global_step = self.nonfinite_steps = self.consecutive_nonfinite = 0
        self.train_seconds = 0.0  # of the whole run before this session
        self.history: list[float] = []  # loss per step of the whole run (loss.png)
        self.losses: list[float] = []  # this session's
        self._lock = None
        self.clock = time.perf_counter  # the seconds a time budget counts (a test may simulate them)
        self.threads = set_num_threads(config.threads)  # before any torch work: --threads N
        set_seed(config.seed)
        with lost_process_errors(config.ddp_timeout, lambda: "start-up"):
            self._setup()

    def _setup(self) -> None:
        config = self.config
        self.accelerator = accelerator = run_accelerator(config)
        # Before any work: an unwritable or full disk, or another run in the folder, stops us now.
        check_output_dir(self.output_dir)
        self._lock = lock_output_dir(self.output_dir) if accelerator.is_main_process else None
        parts, self.batches = self.task.build(self)
        prepared = accelerator.prepare(*[item for part in parts for item in (part.module, part.optimizer)])
        for index, part in enumerate(parts):
            part.module, part.optimizer = prepared[2 * index], prepared[2 * index + 1]
            part.module.train()  # a pretrained model loads in eval mode
        self.parts = parts
        total = None if config.max_train_time else config.max_train_steps
        self.schedule = RunSchedule(config.lr_scheduler, config.learning_rate, config.lr_warmup_steps, total)
        self.budget = TimeBudget(config.max_train_time) if config.max_train_time else None
        accelerator.register_for_checkpointing(self.schedule)
        for item in self.task.checkpoint_objects():
            accelerator.register_for_checkpointing(item)
        self.task.prepared(self)
        checkpoint = resolve_checkpoint(self.output_dir, config.resume_from_checkpoint)
        if checkpoint is not None:
            self._resume(checkpoint)
        self._apply_learning_rate()
        accelerator.init_trackers(config.tracker_project_name, config=tracker_config(config))

    def unwrap(self, module: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(module)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _resume(self, checkpoint: Path) -> None:
        current = self.task.resume_settings(self)
        state, process_state = load_checkpoint(
            self.accelerator,
            checkpoint,
            check=lambda saved: check_resume_settings(saved.get("settings", {}), current, checkpoint),
        )
        self.global_step, self.nonfinite_steps = state["global_step"], state["nonfinite_steps"]
        self.train_seconds, self.history = state.get("train_seconds", 0.0), state.get("loss_history", [])
        if self.budget is not None and state.get("time_budget") is not None:
            self.budget.load_state_dict(state["time_budget"])
        self.batches.load_state_dict(process_state["data"])
        self.task.load_state(self, state.get("task", {}), process_state.get("task", {}))
        saved_lr, lr = state.get("learning_rate", self.config.learning_rate), self.config.learning_rate
        if saved_lr != lr:  # the schedule's shape is this run's; so is its peak
            logger.warning("resume: learning_rate %g -> %g (from step %d)", saved_lr, lr, self.global_step + 1)
        self.accelerator.print(f"resumed from {checkpoint} at step {self.global_step}")

    def _apply_learning_rate(self) -> None:
        lr = self.schedule.lr()
        for part in self.parts:
            if part.scheduled:
                for group in part.optimizer.param_groups:
                    group["lr"] = lr

    # -- one optimiser step ----------------------------------------------------------------------

    def _accumulate(self, sums: dict) -> bool:
        """Forward and backward passes of the step's micro-batches; False at a NaN/inf loss."""
        accumulation = self.config.gradient_accumulation_steps
        for micro_step in range(accumulation):
            pixels = self.batches.next_batch().to(self.device)
            with ExitStack() as stack:
                if micro_step < accumulation - 1:  # synchronise gradients on the last micro-batch only
                    for part in self.parts:
                        stack.enter_context(self.accelerator.no_sync(part.module))
                loss, logs = self.task.loss(self, pixels)
                if not all_finite(self.accelerator, loss.detach()):
                    return False
                self.accelerator.backward(loss / accumulation)
            for name, value in logs.items():
                sums[name] += float(value.detach() if torch.is_tensor(value) else value) / accumulation
        return True

    def _clip_and_step(self, sums: dict) -> bool:
        """Clip each part's gradients and step its optimiser; False at a NaN/inf gradient."""
        norms = {}
        for part in self.parts:
            parameters = [p for p in part.module.parameters() if p.grad is not None]
            if parameters:  # a part without gradients this step (a GAN before disc_start) stays as it is
                norms[part.name] = float(self.accelerator.clip_grad_norm_(parameters, self.config.max_grad_norm))
        for name, norm in norms.items():
            sums["grad_norm" if name == self.parts[0].name else f"{name}_grad_norm"] = norm
        # fp16 overflows are the GradScaler's business (it skips those steps itself).
        if not all(math.isfinite(norm) for norm in norms.values()) and self.config.mixed_precision != "fp16":
            return False
        for part in self.parts:
            if part.name in norms:
                part.optimizer.step()
        return True

    def training_step(self) -> dict[str, float]:
        """One optimiser step (or a skipped one); returns the values to log."""
        sums: dict[str, float] = defaultdict(float)
        modules = [self.unwrap(part.module) for part in self.parts]
        snapshots = [snapshot_forward_state(module) for module in modules]
        finite = self._accumulate(sums) and self._clip_and_step(sums)
        if finite:
            self.consecutive_nonfinite = 0
        else:
            for module, snapshot in zip(modules, snapshots):
                restore_forward_state(module, snapshot)  # e.g. an EMA codebook fed NaN in the forward pass
            self.nonfinite_steps += 1
            self.consecutive_nonfinite += 1
            sums["loss"] = float("nan")
            logger.warning("non-finite loss or gradient at step %d: step skipped", self.global_step + 1)
        for part in self.parts:
            part.optimizer.zero_grad(set_to_none=True)
        sums.update(self.task.after_step(self, finite))
        sums["lr"] = self.schedule.lr()
        self.schedule.step()
        self._apply_learning_rate()
        if self.consecutive_nonfinite >= self.config.max_consecutive_nonfinite_steps:
            raise non_finite_streak_error(self.consecutive_nonfinite, self.global_step + 1, self.output_dir)
        sums["nonfinite_steps"] = self.nonfinite_steps
        sums["corrupt_images"] = self.batches.corrupt_images
        return dict(sums)

    # -- the run ---------------------------------------------------------------------------------

    def save_checkpoint(self, session_seconds: float) -> Path:
        task_state, task_process_state = self.task.state(self)
        state = {
            "global_step": self.global_step,
            "nonfinite_steps": self.nonfinite_steps,
            "settings": self.task.resume_settings(self),
            "learning_rate": self.config.learning_rate,
            "train_seconds": self.train_seconds + session_seconds,
            "loss_history": self.history,
            "time_budget": self.budget.state_dict() if self.budget is not None else None,
            "task": task_state,
        }
        process_state = {"data": self.batches.state_dict(), "task": task_process_state}
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            self.global_step,
            state,
            process_state,
            self.config.checkpoints_total_limit,
        )

    def _done(self) -> bool:
        total = self.schedule.total_steps
        return total is not None and self.global_step >= total

    def run(self) -> TrainingResult:
        """Train to the step or time budget, then finish. A lost process ends the run on the others
        with a `ProcessLostError`; the output folder's lock is released however the run ends."""
        try:
            with lost_process_errors(self.config.ddp_timeout, lambda: f"step {self.global_step + 1}"):
                result = self._run()
            self.release_output_dir(remove=True)
            return result
        finally:
            self.release_output_dir()

    def _run(self) -> TrainingResult:
        accelerator = self.accelerator
        progress = tqdm(
            total=self.schedule.total_steps, initial=self.global_step, disable=not accelerator.is_main_process
        )
        progress.set_description("steps")
        start, cpu_start = self.clock(), time.process_time()
        seconds = 0.0  # this session's training time after each step (a checkpoint's counts in the next one)
        while not self._done():
            step_start = seconds
            logs = self.training_step()
            self.global_step += 1
            self.losses.append(logs.get("loss", float("nan")))
            self.history.append(self.losses[-1])
            accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=self.global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{self.losses[-1]:.4f}", refresh=False)
            seconds = self.clock() - start
            if self.budget is not None:  # every process fits the same step count (see main_process_seconds)
                seconds = main_process_seconds(accelerator, seconds)
            self._checkpoint_and_validate(seconds)
            if self.budget is not None:
                self.budget.observe(self.schedule, seconds - step_start, self.train_seconds + seconds)
                progress.total = self.schedule.total_steps
        progress.close()
        return self._finish(self.clock() - start, time.process_time() - cpu_start)

    def _checkpoint_and_validate(self, session_seconds: float) -> None:
        config, step = self.config, self.global_step
        if config.checkpointing_steps and step % config.checkpointing_steps == 0:
            if self.consecutive_nonfinite:  # the same on every process (all skip a step together)
                streak = self.consecutive_nonfinite
                logger.warning(
                    "no checkpoint at step %d: its last %d steps were NaN/inf (the last good one stays)", step, streak
                )
            else:
                self.save_checkpoint(session_seconds)
        if config.validation_steps and step % config.validation_steps == 0 and not self._done():
            if self.accelerator.is_main_process:
                metrics = self.task.validate(self)
                self.accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=step)
            self.accelerator.wait_for_everyone()

    def _finish(self, session_seconds: float, cpu_seconds: float) -> TrainingResult:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        summary = run_summary(self, session_seconds, cpu_seconds)
        model = self.task.final_model(self)
        metrics = {}
        if accelerator.is_main_process:
            metrics = self.task.finish(self, summary)
            write_metrics_json(metrics, self.output_dir / "metrics.json")
            write_loss_plot(self.history, self.output_dir / "loss.png")
        accelerator.wait_for_everyone()
        accelerator.end_training()
        if accelerator.is_main_process:
            self.task.publish(self)
        rate = session_seconds / max(1, len(self.losses))
        accelerator.print(
            f"done: {self.global_step} steps ({len(self.losses)} this session, {session_seconds:.1f} s, "
            f"{rate:.3f} s/step), final loss {summary['final_train_loss']}, written to {self.output_dir}"
        )
        return TrainingResult(model=model, metrics=metrics, losses=self.losses)

    def release_output_dir(self, remove: bool = False) -> None:
        """Let another run use the output folder; `remove`: delete the lock file too (a clean
        finish). The kernel also releases the lock when the process ends."""
        if self._lock is not None:
            if remove:
                (self.output_dir / LOCK_FILE).unlink(missing_ok=True)  # while still held: no other run has it
            self._lock.close()
            self._lock = None


def run_summary(engine: Engine, session_seconds: float, cpu_seconds: float) -> dict:
    """Collective: the run's counters for metrics.json. `cpu_seconds`: this process's CPU time in
    this session's training loop (its threads; DataLoader workers are other processes), the
    number that a shared machine's load disturbs least."""
    config, accelerator = engine.config, engine.accelerator
    # Processes may meet the same bad file in different epochs: count the union of their files.
    corrupt = set().union(*gather_object([engine.batches.corrupt.state_dict()]))
    images_per_step = config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    return {
        "global_step": engine.global_step,
        "images_seen": engine.global_step * images_per_step,
        "train_seconds_this_session": round(session_seconds, 2),
        "train_seconds": round(engine.train_seconds + session_seconds, 2),
        "train_cpu_seconds_this_session": round(cpu_seconds, 2),
        "max_train_time": config.max_train_time,
        "final_train_loss": engine.losses[-1] if engine.losses else None,
        "nonfinite_steps": engine.nonfinite_steps,
        "corrupt_images": len(corrupt),
        "corrupt_validation_images": len(engine.batches.held_out_corrupt),
        "num_processes": accelerator.num_processes,
        "threads": torch.get_num_threads(),  # intra-op threads per process (--threads, else torch's default)
    }


def data_source(config: RunConfig) -> str:
    """The training data in a few words: the dataset name or folder (metrics.json, model cards)."""
    return config.dataset_name or config.train_data_dir or "builtin:digits"


def training_report(
    engine: Engine,
    summary: dict,
    *,
    kind: str,
    metrics: dict,
    num_images: int,
    details: dict | None = None,
    source: str | None = None,
    per_dimension: dict | None = None,
) -> dict:
    """The `metrics.json` report of a training run (`latentcode.reporting` schema 1): `metrics`
    measured on `num_images` held-out images of the training data at the end, the run counters
    (`summary`, see [`run_summary`]), the first step's loss and the task's own `details` under
    `details`; `source`: the data's name (default: the config's dataset); `per_dimension`: name ->
    one value per latent dimension (a VAE's KL)."""
    source = source or data_source(engine.config)
    return metrics_report(
        kind=kind,
        model=str(engine.output_dir),
        data={"source": source, "split": "validation", "num_images": num_images},
        metrics=metrics,
        details={**summary, "first_train_loss": engine.history[0] if engine.history else None, **(details or {})},
        per_dimension=per_dimension,
    )


def all_finite(accelerator: Accelerator, value: torch.Tensor) -> bool:
    """True when `value` is finite on every process (all must skip a step together)."""
    finite = torch.tensor([float(torch.isfinite(value).all())], device=accelerator.device)
    return bool(accelerator.gather(finite).min() > 0)


def main_process_seconds(accelerator: Accelerator, seconds: float) -> float:
    """Collective: the main process's `seconds`, on every process. A time budget fits its step
    count from them: counts fitted from each process's own clock could end one step apart and
    leave a process waiting for a gradient reduction that the others never join."""
    if accelerator.num_processes == 1:
        return seconds
    return broadcast(torch.tensor([seconds], dtype=torch.float64, device=accelerator.device)).item()


def non_finite_streak_error(streak: int, step: int, output_dir: Path) -> NonFiniteLossError:
    """The error that stops a run after `streak` NaN/inf steps in a row, up to `step`."""
    last = list_checkpoints(output_dir)
    return NonFiniteLossError(
        f"{streak} steps in a row had a NaN/inf loss or gradient (up to step {step}); stopping. "
        f"Last good checkpoint: {last[-1] if last else 'none'}"
    )
