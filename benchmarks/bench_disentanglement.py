"""The β-VAE family on the generated dSprites (issue 34): train each objective's preset for its 20
minutes on one core, score it, and tabulate mean +/- standard error over seeds.

    # train and score objective:seed jobs one after another, pinned to one core (one thread)
    PYTHONPATH=src python benchmarks/bench_disentanglement.py run --core 0 btcvae:0 vae:0 factorvae:0
    # the table from the finished runs (reads only JSON)
    python benchmarks/bench_disentanglement.py table runs/dsprites --output benchmarks/results/disentanglement

`run` calls, per job, `training/train.py --config training/configs/dsprites_OBJECTIVE.yaml --seed S
--threads 1 --output_dir RUNS/OBJECTIVE-sS` under `taskset -c CORE`, then `latentcode-disentanglement`
on the saved model (the five metrics at disentanglement_lib's sizes, plus `sampled_mig`, MIG as
Chen et al. (2018) estimate it, at `--sampled_mig_samples` entropy samples; `--update_model_card`),
then `latentcode-eval` on the first 1,000 held-out images (RUNS/OBJECTIVE-sS/held_out/: PSNR, KL,
active dimensions). Each start and end goes into RUNS/schedule.txt with the load average.

`table` reads RUNS/OBJECTIVE-sS/metrics.json (training: steps, CPU seconds),
RUNS/OBJECTIVE-sS/held_out/metrics.json and RUNS/OBJECTIVE-sS/disentanglement/disentanglement.json,
writes one row file per run (`rows/OBJECTIVE-sS.json`), `table.md` and `table.json`: per objective
the mean +/- standard error over its seeds, and the differences the issue asks about (β-TCVAE and
FactorVAE minus the plain VAE on MIG), with the rules' verdict (benchmarks/README.md, "Rules").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes_over_seeds import mean_and_standard_error  # noqa: E402

OBJECTIVES = ("vae", "betavae", "capacity", "btcvae", "factorvae")
NAMES = {
    "vae": "VAE (β = 1)",
    "betavae": "β-VAE (β = 4)",
    "capacity": "capacity annealing",
    "btcvae": "β-TCVAE (β = 6)",
    "factorvae": "FactorVAE (γ = 35)",
}
COLUMNS = {  # column -> how to read it from a run's row
    "MIG": lambda row: row["scores"]["mig"],
    "sampled MIG (Chen)": lambda row: row["scores"].get("sampled_mig", math.nan),
    "FactorVAE score": lambda row: row["scores"]["factor_vae_score"],
    "BetaVAE score": lambda row: row["scores"]["beta_vae_score"],
    "DCI D": lambda row: row["scores"]["dci_disentanglement"],
    "DCI C": lambda row: row["scores"]["dci_completeness"],
    "DCI I": lambda row: row["scores"]["dci_informativeness"],
    "SAP": lambda row: row["scores"]["sap_score"],
    "PSNR (dB)": lambda row: row["held_out"]["psnr"],
    "KL (nats)": lambda row: row["held_out"]["kl"],
    "active dims": lambda row: row["held_out"]["active_dimensions"],
    "steps": lambda row: row["training"]["steps"],
    "training CPU-s": lambda row: row["training"]["cpu_seconds"],
}
ROOT = Path(__file__).resolve().parents[1]


def run_jobs(args) -> None:
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    pin = ["taskset", "-c", str(args.core)]

    def log(event: str) -> None:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        with open(runs / "schedule.txt", "a") as schedule:
            schedule.write(
                f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {event} core {args.core} load {load}\n"
            )

    for job in args.jobs:
        objective, _, seed = job.partition(":")
        if objective not in OBJECTIVES or not seed.isdigit():
            raise SystemExit(f"a job is OBJECTIVE:SEED with OBJECTIVE one of {', '.join(OBJECTIVES)}; got {job!r}")
        out = runs / f"{objective}-s{seed}"
        train = [sys.executable, str(ROOT / "training/train.py"), "--config",
                 str(ROOT / f"training/configs/dsprites_{objective}.yaml"), "--threads", "1", "--seed", seed,
                 "--output_dir", str(out)]  # fmt: skip
        score = [sys.executable, "-m", "latentcode.evaluation.disentanglement_cli", str(out), "--output_dir",
                 str(out / "disentanglement"), "--metrics", "beta_vae,factor_vae,mig,dci,sap,sampled_mig",
                 "--sampled_mig_samples", str(args.sampled_mig_samples), "--update_model_card", "--device", "cpu"]  # fmt: skip
        held_out = [sys.executable, "-m", "latentcode.evaluation.cli", "--pretrained_model_name_or_path", str(out),
                    *HELD_OUT_EVALUATION, "--output_dir", str(out / HELD_OUT_FOLDER)]  # fmt: skip
        for step, command in (("train", train), ("score", score), ("evaluate", held_out)):
            if step == "train" and (out / "model.safetensors").exists():
                continue  # trained earlier: score it only
            log(f"start {step} {job}")
            with open(runs / f"{objective}-s{seed}.{step}.log", "w") as output:
                code = subprocess.call(pin + command, stdout=output, stderr=subprocess.STDOUT, env=environment)
            log(f"end {step} {job} rc {code}")
            if code:
                break


# Reconstruction, KL and active dimensions: `latentcode-eval` on the first 1,000 images of the
# held-out split, which come in a shuffled order (latentcode.data.images.EveryTenth) and so sample
# every factor. (A training's own validation, its first 64 held-out images, was one sprite - the
# smallest square, unrotated - for runs trained before 2026-12-07, when the split kept factor order.)
HELD_OUT_FOLDER = "held_out"
HELD_OUT_EVALUATION = ["--dataset_name", "builtin:dsprites", "--split", "test", "--max_images", "1000",
                       "--resolution", "64", "--no_fid", "--no_lpips", "--threads", "1", "--device", "cpu"]  # fmt: skip


def held_out_metrics(directory: Path) -> dict:
    """PSNR, KL and active dimensions (Burda et al.'s: the posterior mean's variance over the
    images above 0.01) of the run on 1,000 held-out images, from RUN/held_out/metrics.json."""
    path = directory / HELD_OUT_FOLDER / "metrics.json"
    if not path.exists():
        raise SystemExit(
            f"{path} is missing (the evaluation `run` writes after scoring); write it with: latentcode-eval "
            f"--pretrained_model_name_or_path {directory} {' '.join(HELD_OUT_EVALUATION)} --output_dir {path.parent}"
        )
    report = json.loads(path.read_text())
    if report["data"]["num_images"] != 1000 or "activity" not in report.get("per_dimension", {}):
        raise SystemExit(f"{path}: expected latentcode-eval's report on 1,000 images with each dimension's activity")
    return {name: report["metrics"][name] for name in ("psnr", "kl", "active_dimensions")}


def read_run(directory: Path) -> dict:
    training = json.loads((directory / "metrics.json").read_text())
    scores = json.loads((directory / "disentanglement" / "disentanglement.json").read_text())
    objective, _, seed = directory.name.rpartition("-s")
    details = training["details"]
    return {
        "objective": objective,
        "seed": int(seed),
        "held_out": held_out_metrics(directory),
        "training": {
            "steps": details["global_step"], "cpu_seconds": details["train_cpu_seconds_this_session"],
            "seconds": details["train_seconds"],
        },
        "scores": scores["metrics"],
        "scoring_seconds": scores["details"]["seconds"],
        "sampled_mig_samples": scores["details"]["results"].get("sampled_mig", {}).get("num_samples"),
    }  # fmt: skip


def difference(rows: list[dict], ours: str, baseline: str, column: str) -> tuple[float, float] | None:
    """Mean difference (ours - baseline) of `column` and its standard error (independent seeds)."""
    a = [COLUMNS[column](row) for row in rows if row["objective"] == ours]
    b = [COLUMNS[column](row) for row in rows if row["objective"] == baseline]
    if len(a) < 2 or len(b) < 2:
        return None
    (mean_a, error_a), (mean_b, error_b) = mean_and_standard_error(a), mean_and_standard_error(b)
    return mean_a - mean_b, math.hypot(error_a, error_b)


def verdict(mean: float, error: float) -> str:
    return "parity" if abs(mean) < 2 * error else ("ahead" if mean > 0 else "behind")


def make_table(args) -> None:
    directories = sorted(
        p for p in Path(args.runs).iterdir() if (p / "disentanglement" / "disentanglement.json").exists()
    )
    rows = [read_run(directory) for directory in directories]
    if not rows:
        raise SystemExit(f"no scored runs in {args.runs}: run `bench_disentanglement.py run` first")
    output = Path(args.output)
    (output / "rows").mkdir(parents=True, exist_ok=True)
    for row in rows:
        (output / "rows" / f"{row['objective']}-s{row['seed']}.json").write_text(json.dumps(row, indent=1) + "\n")
    lines = ["| objective | seeds | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    summary = {}
    for objective in OBJECTIVES:
        group = [row for row in rows if row["objective"] == objective]
        if not group:
            continue
        cells, summary[objective] = [], {"seeds": sorted(row["seed"] for row in group)}
        for column, read in COLUMNS.items():
            values = [read(row) for row in group]
            if any(math.isnan(value) for value in values):
                cells.append("–")
                continue
            mean, error = mean_and_standard_error(values)
            summary[objective][column] = {"mean": mean, "standard_error": error, "values": values}
            digits = (
                0
                if column in ("steps", "training CPU-s")
                else (1 if column in ("PSNR (dB)", "KL (nats)", "active dims") else 3)
            )
            cells.append(f"{mean:.{digits}f}" + ("" if math.isnan(error) else f" ± {error:.{digits}f}"))
        lines.append(f"| {NAMES[objective]} | {len(group)} | " + " | ".join(cells) + " |")
    lines += ["", "| difference (mean ± SE, independent seeds) | value | verdict |", "|---|---:|---|"]
    for ours in ("btcvae", "factorvae"):
        for column in ("MIG", "sampled MIG (Chen)"):
            found = difference(rows, ours, "vae", column)
            if found is not None and not math.isnan(found[0]):
                lines.append(
                    f"| {NAMES[ours]} − VAE, {column} | {found[0]:+.3f} ± {found[1]:.3f} | {verdict(*found)} |"
                )
                summary[f"{ours}-minus-vae {column}"] = {"mean": found[0], "standard_error": found[1]}
    text = "\n".join(lines) + "\n"
    (output / "table.md").write_text(text)
    (output / "table.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and score OBJECTIVE:SEED jobs on one core")
    run.add_argument("jobs", nargs="+", help=f"OBJECTIVE:SEED, OBJECTIVE one of {', '.join(OBJECTIVES)}")
    run.add_argument("--core", type=int, default=0)
    run.add_argument("--runs", default="runs/dsprites")
    run.add_argument("--sampled_mig_samples", type=int, default=1000)
    table = commands.add_parser("table", help="the table from scored runs")
    table.add_argument("runs", nargs="?", default="runs/dsprites")
    table.add_argument("--output", default="benchmarks/results/disentanglement")
    args = parser.parse_args()
    run_jobs(args) if args.command == "run" else make_table(args)


if __name__ == "__main__":
    main()
