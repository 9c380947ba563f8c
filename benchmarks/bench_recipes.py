"""Whole training recipes at a fixed rate and a fixed wall clock: test PSNR / SSIM against
training time on CIFAR-10, one curve per recipe, one process (one core) per recipe, two side by side.

    python benchmarks/bench_recipes.py --quick     # 60 s budgets, 500 curve images, no Kodak
    python benchmarks/bench_recipes.py --budget 15m --output_dir benchmarks/results/recipes_15m
    python benchmarks/bench_recipes.py --recipes "latentcode cpu" "diffusers VQModel" --budget 5m
    python benchmarks/bench_recipes.py --budget 15m --recipes "latentcode vae cpu" "diffusers AutoencoderKL" \
        --output_dir benchmarks/results/recipes_vae_15m      # the VAE pair (not in the default list)

The rate is fixed (issue 23): VQ rows have 8x8 tokens of K = 8192 codes, 13 bits per token, 832
bits per 32x32 image; VAE rows an 8x8x4 latent at the KL weight of their preset (1e-3 per value).
Each recipe trains for `--budget` seconds of wall clock on one CPU core
(`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`), `--parallel` (default 2) recipes at a time;
only recipes that ran side by side under the same load compare exactly, so every row records
the load average before and after its run.

- `latentcode ...` rows run the training a user runs: `training/train.py --config PRESET
  --max_train_time BUDGET --train_data_dir ../shared/datasets/cifar10/train --dataset_name none
  --validation_split none` (`latentcode.training.parse_args` + `build_engine`, in the worker process),
  plus the row's overrides; then the saved model (the EMA weights where the preset keeps them)
  is scored.
- peer rows: diffusers' `VQModel` with the backbone of `--peer_preset` (its widths, depth, latent
  size; exported from latentcode's model, `bench_quality.diffusers_row`), with diffusers' own
  quantizer or a vector-quantize-pytorch one in its place (`VectorQuantize` with EMA, k-means,
  dead-code expiry and the rotation trick; its 8-dim cosine-code variant; `SimVQ`). Each trains
  with AdamW at the preset's learning rate, batch, betas and warm-up, a cosine schedule whose
  step count is fitted to the budget from measured step times (`latentcode.training.schedule.
  TimeBudget`, what `--max_train_time` uses), MSE + the quantizer's losses, fp32, on the same
  CIFAR-10 training images (shuffled each epoch, random horizontal flips as the preset).
- VAE rows: `latentcode vae cpu` is `training/train.py` with the one-core VAE preset
  `vae_cifar_cpu.yaml` (as above); its peer `diffusers AutoencoderKL` is diffusers'
  `AutoencoderKL` with the backbone of `--vae_peer_preset` (the same preset; the initial weights
  exported from latentcode's model, `bench_quality.diffusers_vae_row`), trained by the same loop
  as the VQ peers on latentcode's VAE objective at the preset's KL weight and KL warm-up
  (`latentcode.objectives.AutoencoderObjective`: MSE of the decoded posterior sample +
  kl_weight * KL / (C*H*W), the KL in nats per image averaged over the batch).

The curve: the weights the run would save are copied at fixed fractions of the budget and scored
on the first `--curve_images` test images after training. Final: PSNR, SSIM and codebook usage
(VQ) or the KL to N(0, I) in nats per image, mean over the images (VAE) on `--num_test_images`
(all 10,000) test images, and Kodak at full resolution as a check of generalisation to large
photos, every row over the whole photo (diffusers' models have no tiling, and the backbones are
fully convolutional). A VAE row is scored on the decoding of its posterior mean. Outputs in
`--output_dir`: `recipes.json`, `recipes.md` (a KL column where VAE rows are present),
`recipes_psnr.png` (every row on one chart).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import (  # noqa: E402
    Row,
    VAERow,
    diffusers_row,
    diffusers_vae_row,
    evaluate,
    load_images,
    to_pixels,
    vqp_vector_quantize,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
CODEBOOK_SIZE = 8192
BITS_PER_IMAGE = 8 * 8 * int(math.log2(CODEBOOK_SIZE))
# How a row's Kodak score was taken. Rows without the field are whole-photo rows of the peers'
# loop; a row file of 2026-12-02 whose latentcode model was tiled says so (and is not ranked
# against whole-photo scores: `kodak_cell`).
KODAK_WHOLE_PHOTO = "whole photo"
# Where on the budget the curve's weights are copied (the last point is the saved model).
CURVE_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4)


@dataclass
class Recipe:
    """A latentcode preset (`config`, with command-line `overrides`) or a peer (`peer`: the key of
    `peer_quantizer` for a VQ peer, `VAE_PEER` for the VAE one), trained for `budget_fraction` of
    `--budget`. `family` ("vqvae" or "vae") is the model family of the row: the preset's
    `model_family`, and the one whose peer preset (`--peer_preset` / `--vae_peer_preset`) a peer
    takes."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    peer: str | None = None
    note: str = ""
    family: str = "vqvae"
    budget_fraction: float = 1.0

    def budget(self, args) -> float:
        return args.budget * self.budget_fraction


RECIPES = {
    "latentcode vqvae_cifar10 (GPU preset)": Recipe("vqvae_cifar10.yaml", note="128/256/256, bf16"),
    "latentcode cpu": Recipe("vqvae_cifar10_cpu.yaml", note="the one-core preset"),
    "diffusers VQModel": Recipe(peer="diffusers", note="diffusers' own VectorQuantizer"),
    "diffusers + vqp EMA + rotation": Recipe(peer="vqp_ema_rotation", note="EMA, k-means, dead-code expiry"),
    "diffusers + vqp cosine 8-dim": Recipe(peer="vqp_cosine", note="8-dim l2-normalised codes, EMA, k-means"),
    "diffusers + vqp SimVQ": Recipe(peer="vqp_simvq"),
}
DEFAULT_RECIPES = list(RECIPES)  # the VQ table; `--recipes` names any other

# The 60-minute goal: latentcode at half the time reaches the peer's PSNR at the full time.
RECIPES["latentcode cpu, half the budget"] = Recipe(
    "vqvae_cifar10_cpu.yaml", note="half of --budget", budget_fraction=0.5
)

# The VAE pair (issue 23): latentcode's one-core VAE preset against diffusers' AutoencoderKL with
# its backbone, on the same objective, at the same 8x8x4 latent and KL weight.
VAE_PEER = "AutoencoderKL"
RECIPES.update(
    {
        "latentcode vae cpu": Recipe("vae_cifar_cpu.yaml", note="the one-core VAE preset", family="vae"),
        "diffusers AutoencoderKL": Recipe(peer=VAE_PEER, note="latentcode's VAE objective", family="vae"),
    }
)

# Screening variants (issue 23 "Everything else is free"): the one-core preset with one change
# each. `--recipes screen` runs them all (at a few minutes' budget: a first cut, not the final table).
SCREEN = {
    "screen cpu": [],
    "screen 32/64/64": ["--model.block_out_channels", "[32, 64, 64]"],
    "screen batch 64": ["--train_batch_size", "64"],
    "screen lr 2e-4": ["--learning_rate", "2e-4"],
    "screen bf16": ["--mixed_precision", "bf16"],
    "screen weight EMA 0.999": ["--use_ema", "--ema_decay", "0.999"],
    "screen 8-dim l2 codes": ["--model.quantizer_config", "{l2_normalize: true}"],
    "screen decoder fine-tune 0.2": ["--decoder_finetune_fraction", "0.2"],
    "screen beta2 0.99": ["--adam_beta2", "0.99"],
    "screen 2 layers": ["--model.layers_per_block", "2"],
    # ViTok: spend the extra FLOPs in the decoder only (diffusers' VQModel has one width for both)
    "screen decoder 16/32/64": ["--model.decoder_block_out_channels", "[16, 32, 64]"],
    "screen decoder 16/48/96": ["--model.decoder_block_out_channels", "[16, 48, 96]"],
    "screen decoder 2 layers": ["--model.decoder_layers_per_block", "2"],
    "screen lr 2e-3": ["--learning_rate", "2e-3"],
    "screen batch 32 lr 2e-3": ["--train_batch_size", "32", "--learning_rate", "2e-3"],
    "screen simvq": ["--model.quantizer", "simvq"],
}
RECIPES.update(
    {name: Recipe("vqvae_cifar10_cpu.yaml", overrides, note="screening") for name, overrides in SCREEN.items()}
)


def peer_quantizer(kind: str, dim: int, tokens_per_step: int):
    """The quantizer module a peer row puts into diffusers' `VQModel` (None: its own).
    `tokens_per_step` (batch x latent height x width) sets vqp's dead-code threshold: half the
    mean EMA count per code, with decay 0.99 (`bench_quality.vqp_vector_quantize` says why). Rows run before 2026-12-07 gave an absolute
    `threshold_ema_dead_code=2`: 16x the mean count at 1,024 tokens per step and K = 8,192, so
    vqp re-seeded nearly every code every step (misconfigured; benchmarks/README.md)."""
    from vector_quantize_pytorch import SimVQ

    def vqp(**options):
        return vqp_vector_quantize(dim, CODEBOOK_SIZE, tokens_per_step, **options)

    return {
        "diffusers": lambda: None,
        "vqp_ema_rotation": lambda: vqp(rotation_trick=True),
        "vqp_cosine": lambda: vqp(codebook_dim=8, use_cosine_sim=True),
        "vqp_simvq": lambda: SimVQ(dim=dim, codebook_size=CODEBOOK_SIZE, channel_first=True),
    }[kind]()


def tokens_per_step(values: dict) -> int:
    """Encoder vectors per training batch of the preset `values`: batch x (32 / downsampling)^2."""
    side = 32 // 2 ** (len(values["model"]["block_out_channels"]) - 1)
    return values["train_batch_size"] * side * side


def preset(path: Path) -> dict:
    """The preset's options by name (the file's, else `TrainingConfig`'s defaults; names are unique
    across the YAML's groups), its `model` section included."""
    from latentcode.training.config import load_config

    return load_config(path).option_values()


def preset_family(values: dict) -> str:
    """The model family a preset trains (`TrainingConfig`'s default where it names none)."""
    return values.get("model_family", "vqvae")


def peer_backbone(values: dict) -> dict:
    """The encoder / decoder shape of a preset's `model` section, for diffusers' `VQModel` or
    `AutoencoderKL`."""
    keys = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "mid_block_add_attention")
    return {"sample_size": 32, **{key: values["model"][key] for key in keys if key in values["model"]}}


def peer_preset_values(recipe: Recipe, args) -> dict:
    """The preset a peer row takes its backbone and optimiser from: `--vae_peer_preset` for a VAE
    row, `--peer_preset` for a VQ one; its `model_family` must be the row's."""
    name = args.vae_peer_preset if recipe.family == "vae" else args.peer_preset
    values = preset(CONFIGS / name)
    family = preset_family(values)
    if family != recipe.family:
        option = "--vae_peer_preset" if recipe.family == "vae" else "--peer_preset"
        raise ValueError(f"{option} {name} is a {family!r} preset, but the peer is a {recipe.family!r} row")
    return values


def check_recipe(name: str, recipe: Recipe, args) -> None:
    """Before anything trains: a latentcode row's preset is of the row's family (the family decides
    how the saved model is scored), a peer's preset too."""
    if recipe.config is None:
        peer_preset_values(recipe, args)
        return
    family = preset_family(preset(CONFIGS / recipe.config))
    if family != recipe.family:
        raise ValueError(f"recipe {name!r} is a {recipe.family!r} row, but {recipe.config} trains a {family!r} model")


# ----------------------------------------------------------------------------------------------
# One recipe (the worker process)
# ----------------------------------------------------------------------------------------------


class Curve:
    """Copies of the weights a run would save at fixed points of its wall-clock budget."""

    def __init__(self, budget: float):
        self.points = [fraction * budget for fraction in CURVE_FRACTIONS]
        self.snapshots: list[tuple[float, int, dict]] = []  # (train seconds, step, state dict)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def maybe_copy(self, step: int, state) -> None:
        """`state()`: the weights to score, called only when a point is passed."""
        elapsed = self.elapsed()
        if len(self.snapshots) < len(self.points) and elapsed >= self.points[len(self.snapshots)]:
            self.snapshots.append((elapsed, step, {k: v.detach().clone() for k, v in state().items()}))


def latentcode_saved_weights(engine) -> dict:
    """The state dict the engine's final save would write (live weights, the EMA's where it keeps one)."""
    state = dict(engine.model.state_dict())
    if engine.ema is not None:
        names = {id(p): name for name, p in engine.model.named_parameters()}
        for average, parameter in zip(engine.ema.shadow, engine.averaged, strict=True):
            state[names[id(parameter)]] = average
    return state


def train_latentcode(name: str, recipe: Recipe, args, workdir: Path) -> tuple[Row | VAERow, Curve, dict]:
    """`training/train.py --config PRESET --max_train_time ...` in this process; the saved model,
    as a VQ `Row` or (a VAE preset) a `VAERow` on the objective the run trained with."""
    from transformers import AutoModel

    import latentcode.modeling  # noqa: F401  (registers the families with AutoModel)
    from latentcode.families import family_of
    from latentcode.training import build_engine, parse_args

    output = workdir / name.replace(" ", "_").replace("/", "-")
    argv = [
        *("--config", str(CONFIGS / recipe.config), "--max_train_time", str(recipe.budget(args))),
        *("--train_data_dir", args.train_data_dir, "--dataset_name", "none", "--validation_split", "none"),
        *("--output_dir", str(output), "--report_to", "none", "--checkpointing_steps", "0"),
        *("--validation_steps", "0", "--num_validation_images", "16", "--seed", str(args.seed)),
        *recipe.overrides,
    ]
    engine = build_engine(parse_args(argv))
    curve = Curve(recipe.budget(args))
    train_step = engine.train_step

    def recording():
        logs = train_step()
        curve.maybe_copy(engine.global_step, lambda: latentcode_saved_weights(engine))
        return logs

    engine.train_step = recording
    result = engine.run()
    details = result.metrics["details"]
    model = AutoModel.from_pretrained(output).train()  # the preset's family
    training = {"steps": details["global_step"], "train_seconds": details["train_seconds"], "argv": argv}
    if family_of(model).name == "vae":
        return VAERow(name, model, True, engine.task.objective), curve, training
    return Row(name, model.config.codebook_size, 1, model, is_latentcode=True), curve, training


def peer_batches(train_images: torch.Tensor, batch_size: int, seed: int):
    """Batches of `train_images` in a new shuffle each epoch, randomly flipped, in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(train_images.shape[0], generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            pixels = to_pixels(train_images[order[start : start + batch_size]])
            flip = torch.rand(batch_size, generator=generator) < 0.5
            yield torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)


def peer_row(name: str, kind: str, values: dict, seed: int = 0) -> Row:
    """diffusers' `VQModel` with the backbone of the preset `values` and the quantizer `kind`."""
    backbone = peer_backbone(values)
    quantizer = peer_quantizer(kind, backbone["latent_channels"], tokens_per_step(values))
    row = diffusers_row(CODEBOOK_SIZE, quantizer, seed, backbone)
    row.name = name
    return row


def vae_peer_row(name: str, values: dict, seed: int = 0) -> VAERow:
    """diffusers' `AutoencoderKL` with the backbone of the VAE preset `values`, on the objective
    `training/train.py` builds from it: the run's `kl_weight` if set, else the model's, warmed up
    over its `kl_warmup_steps` (with the same factor at the same step)."""
    if values.get("vae_objective", "kl") != "kl":
        raise ValueError(
            f"the AutoencoderKL peer trains the KL objective, not vae_objective={values['vae_objective']!r}"
        )
    # The template model carries the preset's model kl_weight, so the objective resolves the
    # run's `kl_weight` (None: the model's) as train.py does; export to diffusers drops it.
    template = {**peer_backbone(values), **{k: v for k, v in values["model"].items() if k == "kl_weight"}}
    row = diffusers_vae_row(template, seed, values.get("kl_weight"), values.get("kl_warmup_steps", 0))
    row.name = name
    return row


def train_peer(
    row: Row | VAERow, values: dict, batches, seconds: float | None = None, steps: int | None = None, curve=None
) -> float:
    """AdamW at the preset's learning rate, betas and warm-up, then a cosine decay to 0 at `steps`,
    or at the step count fitted to `seconds` from measured step times (as `--max_train_time`);
    `row.loss` (MSE + the quantizer's losses, or latentcode's VAE objective), gradients clipped to
    norm 1. Returns the training seconds."""
    from latentcode.training.schedule import RunSchedule, TimeBudget

    parameters = [p for p in row.model.parameters() if p.requires_grad]
    betas = (values.get("adam_beta1", 0.9), values.get("adam_beta2", 0.999))
    optimizer = torch.optim.AdamW(parameters, lr=values["learning_rate"], betas=betas, weight_decay=0.0)
    schedule = RunSchedule("cosine", values["learning_rate"], values.get("lr_warmup_steps", 0), steps)
    budget = TimeBudget(seconds) if seconds is not None else None
    start = time.perf_counter()
    while schedule.total_steps is None or row.steps < schedule.total_steps:
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr()
        row.loss(next(batches)).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        row.steps += 1
        if budget is not None:
            budget.observe(schedule, time.perf_counter() - began, time.perf_counter() - start)
        if curve is not None:
            curve.maybe_copy(row.steps, row.model.state_dict)
    return time.perf_counter() - start


def score_curve(row: Row | VAERow, curve: Curve, curve_set: torch.Tensor) -> list[tuple[float, float]]:
    """Test PSNR of every copied state, then the final weights are put back."""
    final = {k: v.detach().clone() for k, v in row.model.state_dict().items()}
    points = []
    for seconds, _, state in curve.snapshots:
        row.model.load_state_dict(state)
        points.append((seconds, evaluate(row, curve_set)["psnr"]))
    row.model.load_state_dict(final)
    return points


@torch.no_grad()
def score_kodak(row: Row | VAERow, kodak_dir: Path) -> dict:
    """Mean PSNR / SSIM over the Kodak images at full resolution, every row in one pass over the
    whole photo (no tiling: the peers have none, and tiles change a model's output); a VAE decodes
    the posterior mean (what its forward pass does in eval mode)."""
    import numpy as np
    from PIL import Image

    from latentcode.evaluation.metrics import psnr, ssim

    psnrs, ssims = [], []
    for path in sorted(kodak_dir.glob("*.png")):
        array = np.asarray(Image.open(path).convert("RGB"))
        pixels = to_pixels(torch.from_numpy(array.copy()).permute(2, 0, 1)[None])
        if row.is_latentcode:
            row.model.eval()
            reconstruction = row.model(pixels).sample
            row.model.train()
        else:
            reconstruction, _ = row.reconstruct(pixels)
        reconstruction = reconstruction.clamp(-1, 1)
        psnrs.append(float(psnr(reconstruction, pixels).mean()))
        ssims.append(float(ssim(reconstruction, pixels).mean()))
    return {
        "psnr": sum(psnrs) / len(psnrs),
        "ssim": sum(ssims) / len(ssims),
        "images": len(psnrs),
        "protocol": KODAK_WHOLE_PHOTO,
    }


def worker(name: str, args) -> None:
    """Train and score one recipe; writes `rows/<name>.json` under `--output_dir`."""
    torch.set_num_threads(1)
    recipe, load_before = RECIPES[name], os.getloadavg()
    output_dir = Path(args.output_dir)
    test_images = load_images(None, args.test_data_dir, "test", "img", args.num_test_images)
    if recipe.peer is None:
        row, curve, training = train_latentcode(name, recipe, args, output_dir / "models")
    else:
        values = peer_preset_values(recipe, args)
        train_images = load_images(None, args.train_data_dir, "train", "img", 50000)
        batches = peer_batches(train_images, values["train_batch_size"], args.seed)
        if recipe.family == "vae":
            row = vae_peer_row(name, values, args.seed)
        else:
            row = peer_row(name, recipe.peer, values, args.seed)
        curve = Curve(recipe.budget(args))
        seconds = train_peer(row, values, batches, seconds=recipe.budget(args), curve=curve)
        training = {"steps": row.steps, "train_seconds": seconds, "backbone": peer_backbone(values)}
    load_after = os.getloadavg()
    curve_set = test_images[: args.curve_images]
    points = score_curve(row, curve, curve_set)
    points.append((training["train_seconds"], evaluate(row, curve_set)["psnr"]))
    final = evaluate(row, test_images)
    kodak = score_kodak(row, Path(args.kodak_dir)) if args.kodak_dir else None
    result = {
        "name": name,
        "note": recipe.note,
        "curve": points,
        "final": final,
        "kodak": kodak,
        "training": training,
        "family": recipe.family,
        **rate(row, test_images),
        "load_average_before": load_before,
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_after": load_after,
    }
    (output_dir / "rows").mkdir(parents=True, exist_ok=True)
    (output_dir / "rows" / f"{slug(name)}.json").write_text(json.dumps(result, indent=2))


def rate(row: Row | VAERow, test_images: torch.Tensor) -> dict:
    """What a row's code is: `bits_per_image` (VQ), or the VAE's `latent_shape` `[C, h, w]`, KL
    weight and warm-up (its KL in nats per image is measured with its scores)."""
    if isinstance(row, VAERow):
        shape = row.latent_shape(to_pixels(test_images[:1]))
        return {"latent_shape": list(shape), **{k: getattr(row.objective, k) for k in ("kl_weight", "kl_warmup_steps")}}
    return {"bits_per_image": BITS_PER_IMAGE}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# ----------------------------------------------------------------------------------------------
# All recipes (the parent process) and the report
# ----------------------------------------------------------------------------------------------


def pinned_to(core: int | None):
    """A `preexec_fn` that pins the child process to one CPU core (None: no pinning)."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def run_all(names: list[str], args, argv: list[str]) -> None:
    """One worker process per recipe, `--parallel` at a time, each on one thread and, with
    `--pin` (the default where the OS allows it), pinned to its own core: the i-th of a group to
    the i-th core this process may use (the rules of benchmarks/README.md)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cores = sorted(os.sched_getaffinity(0)) if args.pin and hasattr(os, "sched_getaffinity") else []
    for start in range(0, len(names), args.parallel):
        group = names[start : start + args.parallel]
        print(f"running side by side: {group} (load average {os.getloadavg()[0]:.2f})", flush=True)
        processes = [
            subprocess.Popen(
                [sys.executable, __file__, *argv, "--worker", name],
                env=env,
                cwd=REPO,
                preexec_fn=pinned_to(cores[index % len(cores)] if cores else None),
            )
            for index, name in enumerate(group)
        ]
        failed = [name for name, process in zip(group, processes) if process.wait() != 0]
        if failed:
            raise SystemExit(f"recipe(s) {failed} failed; see their output above")


def rates(results: list[dict]) -> list[str]:
    """The code of each family's rows, in words: `["VQ: 832 bits/image (8x8 tokens, K = 8192)",
    "VAE: 8x8x4 latent, KL weight 0.001"]` (the families present)."""
    texts = []
    if any(r.get("family", "vqvae") == "vqvae" for r in results):
        texts.append(f"VQ: {BITS_PER_IMAGE} bits/image (8x8 tokens, K = {CODEBOOK_SIZE})")
    for (channels, height, width), weight in sorted(
        {(tuple(r["latent_shape"]), r["kl_weight"]) for r in results if r.get("family", "vqvae") == "vae"}
    ):
        texts.append(f"VAE: {height}x{width}x{channels} latent, KL weight {weight:g}")
    return texts


def kodak_cell(kodak: dict | None) -> str:
    """A row's Kodak PSNR; a score taken another way than over the whole photo (the tiled
    latentcode rows of the first 15-minute run) is labelled as not comparable with the others."""
    if not kodak:
        return "-"
    protocol = kodak.get("protocol", KODAK_WHOLE_PHOTO)
    if protocol == KODAK_WHOLE_PHOTO:
        return f"{kodak['psnr']:.2f}"
    return f"({kodak['psnr']:.2f}, {protocol}: not comparable)"


def markdown(results: list[dict], budget: float) -> str:
    """The table of final scores, VQ rows then VAE rows, each by test PSNR; a KL column where VAE
    rows are present (codebook usage is "-" for them, the KL "-" for VQ rows)."""
    has_vae = any(r.get("family", "vqvae") == "vae" for r in results)
    header = (
        f"Budget {budget:g} s of training per recipe (`train s`: what it took), one thread each; "
        f"{'; '.join(rates(results))}. PSNR / SSIM / usage on the CIFAR-10 test images, Kodak at full "
        "resolution; load average of the machine before -> after the run."
    )
    columns = ["recipe", "steps", "train s", "test images", "test PSNR (dB)", "SSIM", "usage"]
    if has_vae:
        header += " VAE rows decode the posterior mean; KL: to N(0, I), nats per image, mean over the test images."
        columns.append("KL (nats/image)")
    columns += ["Kodak PSNR (dB)", "load avg", "note"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in sorted(results, key=lambda r: (r.get("family", "vqvae") == "vae", -r["final"]["psnr"])):
        final, kodak = r["final"], r["kodak"]
        cells = [r["name"], r["training"]["steps"], f"{r['training']['train_seconds']:.0f}", final["eval_images"]]
        cells += [f"{final['psnr']:.2f}", f"{final['ssim']:.3f}"]
        cells.append(f"{100 * final['usage']:.1f}%" if "usage" in final else "-")
        if has_vae:
            cells.append(f"{final['kl']:.1f}" if "kl" in final else "-")
        cells.append(kodak_cell(kodak))
        cells += [f"{r['load_average_before'][0]:.1f} -> {r['load_average_after'][0]:.1f}", r["note"]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(names: list[str], args) -> None:
    from latentcode.evaluation.figures import line_chart

    output_dir = Path(args.output_dir)
    results = [json.loads((output_dir / "rows" / f"{slug(name)}.json").read_text()) for name in names]
    (output_dir / "recipes.json").write_text(json.dumps({"budget_seconds": args.budget, "rows": results}, indent=2))
    table = markdown(results, args.budget)
    (output_dir / "recipes.md").write_text(table)
    print(table)
    series = {r["name"]: [tuple(point) for point in r["curve"]] for r in results}
    title = f"CIFAR-10 test PSNR, {'; '.join(rates(results))}"
    chart = line_chart(series, title, "training seconds", "PSNR (dB)")
    chart.save(output_dir / "recipes_psnr.png")


def parse(argv: list[str] | None):
    from latentcode.training.schedule import parse_duration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=None, help=f"names, or 'screen' (default: {DEFAULT_RECIPES})")
    parser.add_argument("--budget", default="15m", help="training wall clock per recipe: seconds or 90s / 15m / 2h")
    parser.add_argument("--parallel", type=int, default=2, help="recipes run side by side (1 core each)")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin each side-by-side recipe to its own core",
    )
    parser.add_argument("--pairs", dest="parallel", action="store_const", const=2, help="--parallel 2 (the default)")
    parser.add_argument("--train_data_dir", default=str(REPO.parent / "shared/datasets/cifar10/train"))
    parser.add_argument("--test_data_dir", default=None, help="default: the sibling 'test' of --train_data_dir")
    parser.add_argument("--kodak_dir", default=str(REPO.parent / "shared/datasets/kodak"), help="'' to skip")
    parser.add_argument("--peer_preset", default="vqvae_cifar10_cpu.yaml", help="backbone and optimiser of VQ peers")
    parser.add_argument(
        "--vae_peer_preset", default="vae_cifar_cpu.yaml", help="backbone, optimiser and KL weight of the VAE peer"
    )
    parser.add_argument("--curve_images", type=int, default=1000)
    parser.add_argument("--num_test_images", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="60 s budgets, 500 curve / 1000 test images, no Kodak")
    parser.add_argument("--output_dir", default="benchmarks/results/recipes")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.budget, args.curve_images, args.num_test_images, args.kodak_dir = "60", 500, 1000, ""
    args.budget = parse_duration(args.budget)
    args.test_data_dir = args.test_data_dir or str(Path(args.train_data_dir).parent / "test")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker is not None:
        return worker(args.worker, args)
    names = args.recipes or DEFAULT_RECIPES
    if names == ["screen"]:
        names = list(SCREEN)
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    for name in names:
        check_recipe(name, RECIPES[name], args)
    run_all(names, args, argv)
    write_report(names, args)


if __name__ == "__main__":
    main()
