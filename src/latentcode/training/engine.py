"""The one training loop under `train.py`, `train_prior.py` and `train_latent_diffusion.py`.

One step, in order, is [`Engine.train_step`]: per micro-batch, batch -> forward and objective
(the task's `compute_loss`) -> backward; then clip -> optimiser step -> weight EMA; the run,
[`Engine._run`], logs, checkpoints and validates after each step. A script supplies a
[`TrainingTask`]: what differs between the scripts (the modules it trains with their optimisers,
its batches, the loss of one micro-batch, validation and the final save). The engine does
everything else, the same for every script:

- the accelerator (one CPU, one GPU or many processes), the output-folder lock (its file is
  removed at a clean finish), lost-process errors (`ddp_timeout`);
- per optimiser step, `gradient_accumulation_steps` micro-batches (gradients synchronised on the
  last one only), gradient clipping, the optimisers, the learning-rate schedule, the weight EMA
  (`use_ema`) of the main model; a step whose loss or gradient is NaN/inf on any process is
  skipped on all of them (what its forward pass changed in place is rolled back) and counted,
  `max_consecutive_nonfinite_steps` in a row stop the run before anything is saved from it;
- atomic checkpoints (weights, optimisers, schedule, EMA, RNG, the data position, the quantizers'
  usage windows and the task's own state) and an exact resume that refuses settings that would
  break the trajectory;
- a step budget (`max_train_steps`) or a wall-clock budget (`max_train_time`, the schedule
  fitted to it and fitted again as the machine's speed changes, see `schedule.TimeBudget`; with
  several processes, all fit from the main process's clock, so that they stop at the same step);
- a progress bar with rate and ETA, a one-line summary at the end, `loss.png`, the upload
  (`push_to_hub`).

A new training script is a `RunConfig` subclass with its option groups, a task and one call:

    class MyTask(TrainingTask):
        def build(self, engine):                    # what is trained, and the training batches
            model = ...
            engine.prepare([Part("model", model, torch.optim.AdamW(model.parameters()))])
            return batches
        def compute_loss(self, engine, batch):      # forward pass and objective of one micro-batch
            loss = ...
            return loss, {"loss": loss}
        def validate(self, engine):                 # metrics of the model now
            return {}
        def finish(self, engine, summary):          # save the model; the return value is metrics.json
            engine.model.save_pretrained(engine.output_dir)
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
from ..hub import push_to_hub
from ..reporting import metrics_report, write_metrics_json
from ..threads import set_num_threads
from .checkpointing import OutputDirLock, check_output_dir, load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import MAPPING_SECTIONS, RunConfig
from .ema import EMAModel
from .loss_plot import write_loss_plot
from .schedule import run_schedule
from .state import (
    NonFiniteSteps,
    check_resume_settings,
    load_usage_state,
    lost_process_errors,
    restore_forward_state,
    resume_settings,
    snapshot_forward_state,
    usage_state,
    usage_windows,
)

logger = logging.getLogger(__name__)

# What an output folder holds besides the trained model: left out of its Hub upload.
RUN_FILES = ["checkpoint-*", ".checkpoint-*", ".latentcode.lock", "logs/*", "validation/*"]


def upload_model(output_dir: Path, repo_id: str, token: str | None) -> None:
    """`--push_to_hub`: the finished run's folder, without its checkpoints and logs, to `repo_id`."""
    retry = f"upload later with `hf upload {repo_id} {output_dir}`"
    push_to_hub(output_dir, repo_id, what="the model", retry=retry, token=token, ignore_patterns=RUN_FILES)


def cpu_mixed_precision(config: RunConfig) -> str:
    """The mixed precision a run on the CPU trains in, said at start. bf16 autocast on a CPU is
    several times slower per step than fp32 (5x for `vqvae_cifar10.yaml` on a 2-core CPU), and fp16
    needs a GPU: a `--config` file's bf16 / fp16 (a GPU preset's setting, not the user's choice)
    falls back to "no" with a warning naming the flag that forces it; bf16 given explicitly
    (flag or caller) is kept, with a warning; fp16 given explicitly is refused."""
    precision = config.compute.mixed_precision
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
    `ddp_timeout`. On the CPU, `config.compute.mixed_precision` becomes what [`cpu_mixed_precision`]
    decides (so that checkpoints and metrics.json record the precision trained in)."""
    output_dir = Path(config.output_dir)
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        config.compute.mixed_precision = cpu_mixed_precision(config)
    return Accelerator(
        mixed_precision=config.compute.mixed_precision,
        # Collectives wait at most ddp_timeout for a lost process (see state.lost_process_errors).
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=config.compute.ddp_timeout))],
        log_with=None if config.reporting.report_to == "none" else config.reporting.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.reporting.logging_dir)
        ),
        cpu=not use_cuda,
    )


def tracker_config(config: RunConfig) -> dict:
    """The config flattened to the scalar values trackers accept (`model.KEY` for the model's)."""
    flat = {key: value for key, value in config.option_values().items() if key not in MAPPING_SECTIONS}
    for section in MAPPING_SECTIONS:
        flat.update({f"{section}.{key}": value for key, value in getattr(config, section, {}).items()})
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in flat.items()}


@dataclass
class Part:
    """A trained module and its optimiser. `learning_rate`: a constant rate it keeps (a GAN's
    discriminator), else None: it follows the run's schedule, each of the optimiser's parameter
    groups at `group_factors[i]` times the run's rate (None: all at the run's rate; a fine-tuned
    pretrained decoder beside parts trained from scratch takes a lower one)."""

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    learning_rate: float | None = None
    group_factors: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.group_factors is None:
            return
        groups = len(self.optimizer.param_groups)
        if self.learning_rate is not None:
            raise ValueError(
                f"part {self.name!r}: group_factors scale the run's scheduled rate, and learning_rate "
                f"{self.learning_rate:g} replaces it with a constant one; give one of the two"
            )
        if len(self.group_factors) != groups or min(self.group_factors) <= 0:
            raise ValueError(
                f"part {self.name!r}: expected one positive rate factor per parameter group of its optimiser "
                f"({groups}), got {tuple(self.group_factors)}"
            )

    def rates(self, scheduled: float) -> list[float]:
        """Each parameter group's learning rate when the run's schedule gives `scheduled`."""
        if self.learning_rate is not None:
            return [self.learning_rate] * len(self.optimizer.param_groups)
        return [scheduled * factor for factor in self.group_factors or [1.0] * len(self.optimizer.param_groups)]


@dataclass
class TrainingResult:
    """What a run hands back: the final model, unwrapped; the final metrics (main process; empty
    elsewhere); this process's loss per optimiser step in this session."""

    model: nn.Module
    metrics: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


class TrainingTask:
    """What differs between the training scripts: what is trained on which batches, its loss,
    its validation and its final save. `build`, `compute_loss`, `validate` and `finish` are
    required; `state` / `load_state` default to nothing."""

    def build(self, engine: Engine) -> ImageBatches:
        """Create the modules to train with their optimisers and hand them to `engine.prepare`
        (the first is the main one: the one saved, averaged by the weight EMA); return the
        training batches: an `ImageBatches`, or anything with its `next_batch`, `state_dict`,
        `load_state_dict` and corrupt-image counters (`training.codes.CodeBatches`)."""
        raise NotImplementedError

    def compute_loss(self, engine: Engine, batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Forward pass and objective of one micro-batch (pixels `[B, C, H, W]`, or what the
        task's batches give): `(loss to backpropagate, values to log)`, the logged values
        including `"loss"`, the objective's value. `engine.global_step` is the step it is part of."""
        raise NotImplementedError

    def validate(self, engine: Engine) -> dict:
        """Main process, every `validation_steps`: metrics (and images) of the model now."""
        raise NotImplementedError

    def finish(self, engine: Engine, summary: dict) -> dict:
        """Main process, at the end: validate, save the final model (and card); returns the
        metrics.json report ([`training_report`])."""
        raise NotImplementedError

    def state(self, engine: Engine) -> tuple[dict, dict]:
        """`(state saved once, state saved per process)` of the task in a checkpoint (JSON / torch)."""
        return {}, {}

    def load_state(self, engine: Engine, trainer_state: dict, process_state: dict) -> None:
        """Restore what [`state`] saved."""


class Engine:
    """Runs the one training loop of every script (one step: `train_step`; the run: `_run`), a
    [`TrainingTask`] supplying what differs between them (see the module docstring)."""

    def __init__(self, config: RunConfig, task: TrainingTask):
        self.config, self.task = config, task
        self.output_dir = Path(config.output_dir)
        self.global_step = 0
        self.nonfinite = NonFiniteSteps(config.optimization.max_consecutive_nonfinite_steps)
        self.train_seconds = 0.0  # of the whole run before this session
        self.history: list[float] = []  # loss per step of the whole run (loss.png)
        self.losses: list[float] = []  # this session's
        self.parts: list[Part] = []
        self.ema: EMAModel | None = None
        self.clock = time.perf_counter  # the seconds a time budget counts (a test may simulate them)
        self.threads = set_num_threads(config.compute.threads)  # before any torch work: --threads N
        set_seed(config.seed)
        with lost_process_errors(config.compute.ddp_timeout, lambda: "start-up"):
            self._setup()

    def _setup(self) -> None:
        config = self.config
        self.accelerator = accelerator = run_accelerator(config)
        # Before any work: an unwritable or full disk, or another run in the folder, stops us now.
        check_output_dir(self.output_dir)
        self.output_lock = OutputDirLock(self.output_dir) if accelerator.is_main_process else None
        self.batches = self.task.build(self)
        if not self.parts:
            raise TypeError(f"{type(self.task).__name__}.build must hand the modules it trains to engine.prepare")
        self.schedule, self.budget = run_schedule(config.optimization)
        accelerator.register_for_checkpointing(self.schedule)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        checkpoint = resolve_checkpoint(self.output_dir, config.checkpoints.resume_from_checkpoint)
        if checkpoint is not None:
            self._resume(checkpoint)
        self._apply_learning_rate()
        accelerator.init_trackers(config.reporting.tracker_project_name, config=tracker_config(config))

    def prepare(self, parts: list[Part]) -> list[Part]:
        """The task's `parts` ready to train (their `module` and `optimizer` accelerate's: device,
        DDP, mixed precision), and the weight EMA (`use_ema`) of the first, the main model."""
        prepared = self.accelerator.prepare(*[item for part in parts for item in (part.module, part.optimizer)])
        for index, part in enumerate(parts):
            part.module, part.optimizer = prepared[2 * index], prepared[2 * index + 1]
            part.module.train()  # a pretrained model loads in eval mode
        self.parts = parts
        # Parameters without gradients (an EMA codebook) are averages already: not averaged again.
        # Fixed here: a decoder-only phase later freezes some, and the EMA keeps its tensors.
        self.averaged = [p for p in self.unwrap(parts[0].module).parameters() if p.requires_grad]
        if self.config.ema.use_ema:
            self.ema = EMAModel(self.averaged, self.config.ema.ema_decay).to(self.device)
        return parts

    def unwrap(self, module: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(module)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def model(self) -> nn.Module:
        """The main model, unwrapped (what is saved)."""
        return self.unwrap(self.parts[0].module)

    def _apply_learning_rate(self) -> None:
        lr = self.schedule.lr()
        for part in self.parts:
            for group, rate in zip(part.optimizer.param_groups, part.rates(lr)):
                group["lr"] = rate

    def train_step(self) -> dict[str, float]:
        """One optimiser step, in order: per micro-batch, batch -> forward and objective (the
        task's `compute_loss`) -> backward; then gradient clipping -> optimiser step -> weight EMA
        -> the next step's learning rate. A NaN/inf loss or gradient on any process skips the step
        on all of them (`max_consecutive_nonfinite_steps` in a row stop the run). Returns the logs."""
        logs: dict[str, float] = defaultdict(float)
        snapshots = [snapshot_forward_state(self.unwrap(part.module)) for part in self.parts]
        accumulation = self.config.optimization.gradient_accumulation_steps
        finite = True
        for micro_step in range(accumulation):
            batch = self.batches.next_batch().to(self.device)
            with self._gradient_sync(micro_step == accumulation - 1):
                loss, micro_logs = self.task.compute_loss(self, batch)
                finite = all_finite(self.accelerator, loss.detach())
                if not finite:
                    break
                self.accelerator.backward(loss / accumulation)
            for name, value in micro_logs.items():
                logs[name] += float(value.detach() if torch.is_tensor(value) else value) / accumulation
        norms = self._clip_gradients(logs) if finite else {}
        # fp16 overflows are the GradScaler's business (it skips those steps itself).
        if not all(math.isfinite(norm) for norm in norms.values()) and self.config.compute.mixed_precision != "fp16":
            finite = False
        if finite:
            for part in self.parts:
                if part.name in norms:  # a part without gradients this step (a GAN before disc_start) stays
                    part.optimizer.step()
            if self.ema is not None:
                self.ema.step(self.averaged)
            self.nonfinite.finite()
        else:  # undo what the forward pass changed in place (e.g. an EMA codebook fed NaN)
            for part, snapshot in zip(self.parts, snapshots):
                restore_forward_state(self.unwrap(part.module), snapshot)
            logs["loss"] = float("nan")
            self.nonfinite.skipped(self.global_step + 1, self.output_dir)
        for part in self.parts:
            part.optimizer.zero_grad(set_to_none=True)
        windows = usage_windows(self.model)
        if windows:  # the fraction of codes hit over the quantizers' recent-token windows
            logs["codebook_usage"] = sum(float(window.fraction_used()) for window in windows) / len(windows)
        logs["lr"] = self.schedule.lr()
        self.schedule.step()
        self._apply_learning_rate()
        return {**logs, "nonfinite_steps": self.nonfinite.total, "corrupt_images": self.batches.corrupt_images}

    def _gradient_sync(self, last_micro_batch: bool) -> ExitStack:
        """Gradients are synchronised between processes on the step's last micro-batch only."""
        stack = ExitStack()
        if not last_micro_batch:
            for part in self.parts:
                stack.enter_context(self.accelerator.no_sync(part.module))
        return stack

    def _clip_gradients(self, logs: dict) -> dict[str, float]:
        """Clip each part's gradients; its norm before clipping, per part that has gradients."""
        norms, clip = {}, self.config.optimization.max_grad_norm
        for part in self.parts:
            parameters = [p for p in part.module.parameters() if p.grad is not None]
            if parameters:
                norms[part.name] = float(self.accelerator.clip_grad_norm_(parameters, clip))
        for name, norm in norms.items():
            logs["grad_norm" if name == self.parts[0].name else f"{name}_grad_norm"] = norm
        return norms

    def run(self) -> TrainingResult:
        """Train to the step or time budget, then finish. A lost process ends the run on the others
        with a `ProcessLostError`; the output folder's lock is released however the run ends."""
        try:
            with lost_process_errors(self.config.compute.ddp_timeout, lambda: f"step {self.global_step + 1}"):
                result = self._run()
            self.release_output_dir(remove=True)
            return result
        finally:
            self.release_output_dir()

    def _run(self) -> TrainingResult:
        """Each step trains (`train_step`), logs, checkpoints, validates; to the step or time budget."""
        accelerator = self.accelerator
        steps, main = self.schedule.total_steps, accelerator.is_main_process
        progress = tqdm(total=steps, initial=self.global_step, desc="steps", disable=not main)
        start, cpu_start = self.clock(), time.process_time()
        seconds = 0.0  # this session's training time after each step (a checkpoint's counts in the next one)
        while not self._done():
            step_start = seconds
            logs = self.train_step()  # batch -> forward -> objective -> backward -> optimiser step -> EMA
            self.global_step += 1
            self.losses.append(logs.get("loss", float("nan")))  # log
            self.history.append(self.losses[-1])
            accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=self.global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{self.losses[-1]:.4f}", refresh=False)
            seconds = self.clock() - start
            if self.budget is not None:  # every process fits the same step count (see main_process_seconds)
                seconds = main_process_seconds(accelerator, seconds)
            self._checkpoint(seconds)  # checkpoint
            self._validate()  # validation
            if self.budget is not None:
                self.budget.observe(self.schedule, seconds - step_start, self.train_seconds + seconds)
                progress.total = self.schedule.total_steps
        progress.close()
        return self._finish(self.clock() - start, time.process_time() - cpu_start)

    def _done(self) -> bool:
        total = self.schedule.total_steps
        return total is not None and self.global_step >= total

    def _checkpoint(self, session_seconds: float) -> None:
        """Every `checkpointing_steps`, unless the last steps were NaN/inf (the last good one stays)."""
        step, every = self.global_step, self.config.checkpoints.checkpointing_steps
        if not every or step % every:
            return
        if not self.nonfinite.streak:  # the same on every process (all skip a step together)
            self.save_checkpoint(session_seconds)
        else:
            logger.warning("no checkpoint at step %d: its last %d steps were NaN/inf", step, self.nonfinite.streak)

    def _validate(self) -> None:
        """Every `validation_steps` but the last (the final save validates): the task's metrics, logged."""
        step, every = self.global_step, self.config.reporting.validation_steps
        if not every or step % every or self._done():
            return
        if self.accelerator.is_main_process:
            metrics = self.task.validate(self)
            self.accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=step)
        self.accelerator.wait_for_everyone()

    def save_checkpoint(self, session_seconds: float) -> Path:
        """Everything an exact resume needs ([`run_state`]), written atomically as `checkpoint-STEP`."""
        state, process_state = run_state(self, session_seconds)
        limit = self.config.checkpoints.checkpoints_total_limit
        return save_checkpoint(self.accelerator, self.output_dir, self.global_step, state, process_state, limit)

    def resume_settings(self) -> dict:
        """The settings a resume must keep: the config's `resume_fixed` and the modules trained."""
        return resume_settings(self.config, {"trained_modules": [part.name for part in self.parts]})

    def _resume(self, checkpoint: Path) -> None:
        current = self.resume_settings()
        state, process_state = load_checkpoint(
            self.accelerator,
            checkpoint,
            check=lambda saved: check_resume_settings(saved.get("settings", {}), current, checkpoint),
        )
        restore_run_state(self, state, process_state)
        self.accelerator.print(f"resumed from {checkpoint} at step {self.global_step}")

    def _finish(self, session_seconds: float, cpu_seconds: float) -> TrainingResult:
        """The final model (the EMA's averages with `use_ema`), its save, metrics.json, loss.png, upload."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        summary = run_summary(self, session_seconds, cpu_seconds)
        if self.ema is not None:
            self.ema.copy_to(self.averaged)
        metrics = {}
        if accelerator.is_main_process:
            metrics = self.task.finish(self, summary)
            write_metrics_json(metrics, self.output_dir / "metrics.json")
            write_loss_plot(self.history, self.output_dir / "loss.png")
        accelerator.wait_for_everyone()
        accelerator.end_training()
        if accelerator.is_main_process and self.config.reporting.push_to_hub:
            upload_model(self.output_dir, self.config.reporting.hub_model_id, self.config.reporting.hub_token)
        rate = session_seconds / max(1, len(self.losses))
        accelerator.print(
            f"done: {self.global_step} steps ({len(self.losses)} this session, {session_seconds:.1f} s, "
            f"{rate:.3f} s/step), final loss {summary['final_train_loss']}, written to {self.output_dir}"
        )
        return TrainingResult(model=self.model, metrics=metrics, losses=self.losses)

    def release_output_dir(self, remove: bool = False) -> None:
        """Let another run use the output folder (see [`OutputDirLock.release`])."""
        if self.output_lock is not None:
            self.output_lock.release(remove)


def run_state(engine: Engine, session_seconds: float) -> tuple[dict, dict]:
    """What a checkpoint holds besides what accelerate saves (weights, optimisers, RNG, schedule,
    EMA): `(the run's counters and settings, saved once; this process's data position, quantizer
    usage windows and task state)`."""
    task_state, task_process_state = engine.task.state(engine)
    state = {
        "global_step": engine.global_step,
        "nonfinite_steps": engine.nonfinite.total,
        "settings": engine.resume_settings(),
        "learning_rate": engine.config.optimization.learning_rate,
        "train_seconds": engine.train_seconds + session_seconds,
        "loss_history": engine.history,
        "time_budget": engine.budget.state_dict() if engine.budget is not None else None,
        "task": task_state,
    }
    process_state = {
        "data": engine.batches.state_dict(),
        "quantizer_usage": usage_state(engine.model),
        "task": task_process_state,
    }
    return state, process_state


def restore_run_state(engine: Engine, state: dict, process_state: dict) -> None:
    """Put back what [`run_state`] saved."""
    engine.global_step, engine.nonfinite.total = state["global_step"], state["nonfinite_steps"]
    engine.train_seconds, engine.history = state.get("train_seconds", 0.0), state.get("loss_history", [])
    if engine.budget is not None and state.get("time_budget") is not None:
        engine.budget.load_state_dict(state["time_budget"])
    engine.batches.load_state_dict(process_state["data"])
    load_usage_state(engine.model, process_state["quantizer_usage"])
    engine.task.load_state(engine, state.get("task", {}), process_state.get("task", {}))
    lr = engine.config.optimization.learning_rate
    saved_lr = state.get("learning_rate", lr)
    if saved_lr != lr:  # the schedule's shape is this run's; so is its peak
        logger.warning("resume: learning_rate %g -> %g (from step %d)", saved_lr, lr, engine.global_step + 1)


def run_summary(engine: Engine, session_seconds: float, cpu_seconds: float) -> dict:
    """Collective: the run's counters for metrics.json. `cpu_seconds`: this process's CPU time in
    this session's training loop (its threads; DataLoader workers are other processes), the
    number that a shared machine's load disturbs least."""
    config, accelerator = engine.config, engine.accelerator
    # Processes may meet the same bad file in different epochs: count the union of their files.
    corrupt = set().union(*gather_object([engine.batches.corrupt.state_dict()]))
    optimization = config.optimization
    images_per_step = (
        optimization.train_batch_size * optimization.gradient_accumulation_steps * accelerator.num_processes
    )
    return {
        "global_step": engine.global_step,
        "images_seen": engine.global_step * images_per_step,
        "train_seconds_this_session": round(session_seconds, 2),
        "train_seconds": round(engine.train_seconds + session_seconds, 2),
        "train_cpu_seconds_this_session": round(cpu_seconds, 2),
        "max_train_time": config.optimization.max_train_time,
        "final_train_loss": engine.losses[-1] if engine.losses else None,
        "nonfinite_steps": engine.nonfinite.total,
        "corrupt_images": len(corrupt),
        "corrupt_validation_images": len(engine.batches.held_out_corrupt),
        "num_processes": accelerator.num_processes,
        "threads": torch.get_num_threads(),  # intra-op threads per process (--threads, else torch's default)
    }


def data_source(config: RunConfig) -> str:
    """The training data in a few words: the dataset name or folder (metrics.json, model cards)."""
    return config.data.dataset_name or config.data.train_data_dir or "builtin:digits"


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
