"""Attribute vectors on the generated dSprites, measured (issue 34, item 5): for a trained model,
each attribute's vector from two image sets that differ in one factor only, and how far a move
along it changes every factor, read back from the decoded pixels.

    PYTHONPATH=src python benchmarks/bench_attribute_effects.py --model runs/betavae-dsprites-s0 \\
        --output benchmarks/results/attributes/betavae-dsprites-s0.json

Attributes (factor: low -> high index, on `--count` sprites from the factor sampler, `--seed`):
"larger" scale 1 -> 5, "moved right" position_x 8 -> 24, "moved down" position_y 8 -> 24,
"rotated" orientation 0 -> 10 on hearts (the only shape whose every turn is visible). The vector
is made from one draw of sprites (seed) and measured on another (seed + 1), so it is not scored on
the images it was made from. Units: `latentcode.evaluation.attribute_effects`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from latentcode.evaluation.attribute_effects import attribute_effects, dsprites_attribute_sets
from latentcode.model_loading import load_pretrained_model
from latentcode.traversal import attribute_vector

ATTRIBUTES = {
    "larger": ("scale", 1, 5, None),
    "moved right": ("position_x", 8, 24, None),
    "moved down": ("position_y", 8, 24, None),
    "rotated": ("orientation", 0, 10, {"shape": 2}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True, help="JSON file; the markdown tables go beside it (.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_pretrained_model(args.model).eval()
    channels = model.config.in_channels
    rows, tables = {}, [f"# {args.model}: attribute vectors on dSprites, {args.count} sprites per set\n"]
    started = time.perf_counter()
    for name, (factor, low, high, fixed) in ATTRIBUTES.items():
        with_set, without_set = dsprites_attribute_sets(factor, low, high, args.count, args.seed, channels, fixed)
        _, measured_on = dsprites_attribute_sets(factor, low, high, args.count, args.seed + 1, channels, fixed)
        with torch.no_grad():
            vector = attribute_vector(model, with_set, without_set)
        effects = attribute_effects(model, vector, measured_on)
        rows[name] = {
            "factor": factor,
            "low": low,
            "high": high,
            "fixed": fixed,
            "expected_per_unit_strength": high - low,
            "per_unit_strength": effects.per_unit_strength,
            "absolute_per_unit_strength": effects.absolute_per_unit_strength,
        }
        tables.append(f"## {name} ({factor} {low} -> {high}{', hearts' if fixed else ''})\n\n{effects.markdown()}\n")
        print(tables[-1])
    record = {
        "model": args.model,
        "count": args.count,
        "seed": args.seed,
        "seconds": time.perf_counter() - started,
        "load_average": os.getloadavg(),
        "attributes": rows,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2, default=float))
    output.with_suffix(".md").write_text("\n".join(tables))


if __name__ == "__main__":
    main()
