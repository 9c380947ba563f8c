"""Summarise `bench_recipes.py` pairs run over several seeds: mean +/- standard error per side and
of the paired difference, with the benchmark rules' verdict.

    python benchmarks/recipes_over_seeds.py benchmarks/results/recipes_15m_rules/simvq_seed*
    python benchmarks/recipes_over_seeds.py benchmarks/results/recipes_15m_rules/*_seed* --markdown table.md

Each argument is the `--output_dir` of one `bench_recipes.py` run of two recipes side by side
(`recipes.json`). Runs are grouped by their pair of recipe names; within a group, seed i of one side
is compared with seed i of the other (they ran at the same time, one core each, under the same
load). A difference smaller than twice its standard error is called parity (benchmarks/README.md,
"Rules"). Reads only JSON: no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

METRICS = {
    "CIFAR-10 test PSNR (dB)": lambda row: row["final"]["psnr"],
    "CIFAR-10 test SSIM": lambda row: row["final"]["ssim"],
    "codebook usage (%)": lambda row: 100 * row["final"]["usage"],
    "Kodak PSNR (dB)": lambda row: row["kodak"]["psnr"] if row.get("kodak") else math.nan,
    "training steps": lambda row: row["training"]["steps"],
}


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); SE nan for n < 2."""
    mean = statistics.fmean(values)
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, error


def verdict(mean: float, error: float) -> str:
    """The rules' reading of a difference: a lead only beyond twice its standard error."""
    if math.isnan(error):
        return "one seed: no verdict"
    if mean == 0:
        return "equal"
    if abs(mean) < 2 * error:
        return "parity"
    return "ours ahead" if mean > 0 else "peer ahead"


def load_runs(directories: list[Path]) -> dict[tuple[str, str], list[dict]]:
    """{(ours, peer): [run, ...]}: each run {"seed", "ours", "peer", "load"} from one recipes.json."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for directory in directories:
        path = directory / "recipes.json"
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: pass the --output_dir of a finished bench_recipes.py run")
        result = json.loads(path.read_text())
        rows = result["rows"] if isinstance(result, dict) and "rows" in result else result
        ours = [row for row in rows if row["name"].startswith("latentcode")]
        peers = [row for row in rows if not row["name"].startswith("latentcode")]
        if len(ours) != 1 or len(peers) != 1:
            raise SystemExit(f"{path}: expected one latentcode row and one peer row, found {[r['name'] for r in rows]}")
        seed = seed_of(ours[0], directory)
        loads = [row.get(key, [math.nan])[0] for row in rows for key in ("load_average_before", "load_average_after")]
        run = {"seed": seed, "ours": ours[0], "peer": peers[0], "load": (min(loads), max(loads))}
        groups.setdefault((ours[0]["name"], peers[0]["name"]), []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda run: run["seed"])
    return groups


def seed_of(row: dict, directory: Path) -> int:
    """The run's seed: the `--seed` of the latentcode row's training command (0 when absent)."""
    argv = row.get("training", {}).get("argv", [])
    return int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0


def table(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Markdown lines: one block per pair of recipes."""
    lines = []
    for (ours_name, peer_name), runs in groups.items():
        seeds = ", ".join(str(run["seed"]) for run in runs)
        low = min(run["load"][0] for run in runs)
        high = max(run["load"][1] for run in runs)
        lines += [
            f"**{ours_name}** against **{peer_name}**: seeds {seeds}, side by side, one core each, pinned; "
            f"1-minute load average {low:.1f}-{high:.1f} at the runs' starts and ends.",
            "",
            f"| metric | {ours_name} (mean +/- SE) | {peer_name} (mean +/- SE) | difference, paired (mean +/- SE) "
            "| per seed (ours - peer) | reading |",
            "|---|---|---|---|---|---|",
        ]
        for metric, value in METRICS.items():
            ours = [value(run["ours"]) for run in runs]
            peer = [value(run["peer"]) for run in runs]
            differences = [a - b for a, b in zip(ours, peer)]
            if any(math.isnan(v) for v in ours + peer):
                continue
            om, oe = mean_and_standard_error(ours)
            pm, pe = mean_and_standard_error(peer)
            dm, de = mean_and_standard_error(differences)
            digits = 0 if metric == "training steps" else (3 if "SSIM" in metric else 2)
            per_seed = ", ".join(f"{d:+.{digits}f}" for d in differences)
            reading = verdict(dm, de) if metric != "training steps" else ""
            lines.append(
                f"| {metric} | {om:.{digits}f} +/- {oe:.{digits}f} | {pm:.{digits}f} +/- {pe:.{digits}f} "
                f"| {dm:+.{digits}f} +/- {de:.{digits}f} | {per_seed} | {reading} |"
            )
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of bench_recipes.py runs")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    text = "\n".join(table(load_runs(args.runs)))
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
