"""`latentcode-disentanglement MODEL`: a saved model's disentanglement scores on the generated dSprites.

    latentcode-disentanglement ./vae-btcvae-dsprites --output_dir ./scores
    latentcode-disentanglement org/betavae-dsprites --fast --metrics mig,sap   # minutes -> seconds

Scores the model's representation (a VAE's posterior mean, as disentanglement_lib does) with the
five metrics of `latentcode.evaluation.disentanglement_metrics` on `latentcode.data.dsprites`,
drawn on demand: BetaVAE score, FactorVAE score, MIG, DCI and SAP, at disentanglement_lib's
settings (10,000 training points each; `--fast`: the sizes of `FAST_SIZES`, for a quick look;
their numbers are noisier and not comparable with published ones). Each metric starts from
`RandomState(--seed)`; DCI's and SAP's classifiers are seeded with `--seed` too.

Writes into `--output_dir`: `disentanglement.json` (the reporting schema; kind
"disentanglement", the headline scores under `metrics`, each latent dimension's normalised mutual
information with each factor under `per_dimension`, every metric's full output under `details`),
`disentanglement.md` (the table) and `disentanglement_dimensions.png` (which factor each latent
dimension carries: the dims x factors heatmap of the mutual information over the factor's
entropy, from MIG's sample). `--update_model_card` adds the table to a local model folder's
README.md (replacing an earlier one).

Where the metrics would encode more images than the dataset holds (the five at full size: about
2.9 million), every image is encoded once instead (`latentcode.evaluation.encoded_dsprites`) and
the metrics look codes up: the same draws and scores, several times faster.

`--metrics ...,sampled_mig` adds MIG as Chen et al. (2018)'s code estimates it (`disentanglement_metrics.
sampled_mutual_information_gap`: posterior samples of all 737,280 images, shape left out, as
theirs does) for comparison with the figures of that paper. It needs a VAE's posterior and costs
737,280 x `--sampled_mig_samples` x dimensions x 5 Gaussian densities: at their 10,000 samples
about 45 minutes of one core here per 10-dimensional model; 1,000 samples (`--fast`), 5 minutes.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from ..configuration import VAEConfig
from ..data.dsprites import FACTOR_NAMES, FACTOR_SIZES, NUM_IMAGES, DSprites
from ..model_loading import load_pretrained_model
from ..reporting import metrics_report, write_metrics_json
from . import disentanglement_metrics as dm
from .encoded_dsprites import EncodedDSprites

METRICS = ("beta_vae", "factor_vae", "mig", "dci", "sap", "sampled_mig")
DEFAULT_METRICS = METRICS[:5]  # sampled_mig costs most and needs a posterior: asked for by name
# Chen et al.'s code scores dSprites' scale, orientation and positions (not shape).
SAMPLED_MIG_FACTORS = tuple(FACTOR_NAMES.index(name) for name in ("scale", "orientation", "position_x", "position_y"))
# Sizes of --fast: about a tenth of disentanglement_lib's (which are the functions' defaults).
FAST_SIZES = {
    "beta_vae": dict(num_train=1000, num_eval=500),
    "factor_vae": dict(num_train=1000, num_eval=500, num_variance_estimate=2000),
    "mig": dict(num_train=2000),
    "dci": dict(num_train=1000, num_test=500),
    "sap": dict(num_train=1000, num_test=500),
    "sampled_mig": dict(num_samples=1000),
}
HEADLINES = {  # metric -> (its output's key, the name under metrics.json's `metrics`)
    "beta_vae": [("eval_accuracy", "beta_vae_score")],
    "factor_vae": [("eval_accuracy", "factor_vae_score")],
    "mig": [("discrete_mig", "mig")],
    "dci": [
        ("disentanglement", "dci_disentanglement"),
        ("completeness", "dci_completeness"),
        ("informativeness_test", "dci_informativeness"),
    ],
    "sap": [("SAP_score", "sap_score")],
    "sampled_mig": [("sampled_mig", "sampled_mig")],
}
MARKER_START, MARKER_END = "<!-- latentcode-disentanglement -->", "<!-- /latentcode-disentanglement -->"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentcode-disentanglement",
        description="Disentanglement scores (BetaVAE, FactorVAE, MIG, DCI, SAP) of a saved model on generated dSprites.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("pretrained_model_name_or_path", help="a model folder or a Hub id (64x64 grey-scale input)")
    parser.add_argument("--output_dir", default="disentanglement", help="where the JSON, table and figure go")
    parser.add_argument(
        "--metrics", default=",".join(DEFAULT_METRICS), help=f"comma-separated, of {', '.join(METRICS)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="each metric's RandomState seed (disentanglement_lib: 0)")
    parser.add_argument("--fast", action="store_true", help="about a tenth of the reference's sample sizes")
    parser.add_argument(
        "--sampled_mig_samples", type=int, default=None,
        help="sampled_mig's entropy samples (default: Chen et al.'s 10,000; with --fast 1,000)",
    )  # fmt: skip
    parser.add_argument("--revision", default=None, help="the Hub revision of the model")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--update_model_card", action="store_true", help="add the table to MODEL/README.md (a folder)")
    return parser


def _chosen_metrics(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(METRICS))
    if unknown or not chosen:
        raise ValueError(f"--metrics takes a comma-separated list of {', '.join(METRICS)}; got {text!r}")
    return [name for name in METRICS if name in chosen]


class CountingRepresentation:
    """A representation function that counts the images it encodes (the report's `num_images`)."""

    def __init__(self, representation: Callable[[np.ndarray], np.ndarray]):
        self.representation, self.images = representation, 0

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        self.images += len(observations)
        return self.representation(observations)


SAMPLED_FUNCTIONS = {  # the metrics that draw (and encode) images as they go
    "beta_vae": dm.beta_vae_score,
    "factor_vae": dm.factor_vae_score,
    "mig": dm.mutual_information_gap,
    "dci": dm.dci,
    "sap": dm.sap_score,
}


def metric_sizes(name: str, fast: bool) -> dict:
    """A sampled metric's sample sizes: its function's defaults (disentanglement_lib's), or --fast's."""
    defaults = {
        key: parameter.default
        for key, parameter in inspect.signature(SAMPLED_FUNCTIONS[name]).parameters.items()
        if key.startswith(("num_", "batch_size"))
    }
    return defaults | (FAST_SIZES[name] if fast else {})


def images_drawn(metrics: list[str], fast: bool) -> int:
    """How many images the sampled `metrics` render and encode when drawn on demand."""
    count = {
        "beta_vae": lambda n: 2 * n["batch_size"] * (n["num_train"] + n["num_eval"]),
        "factor_vae": lambda n: n["num_variance_estimate"] + n["batch_size"] * (n["num_train"] + n["num_eval"]),
        "mig": lambda n: n["num_train"],
        "dci": lambda n: n["num_train"] + n["num_test"],
        "sap": lambda n: n["num_train"] + n["num_test"],
    }
    return sum(count[name](metric_sizes(name, fast)) for name in metrics if name in SAMPLED_FUNCTIONS)


def score(
    representation,
    metrics: list[str],
    seed: int = 0,
    fast: bool = False,
    log=print,
    encoded: EncodedDSprites | None = None,
    sampled_mig_samples: int | None = None,
) -> dict[str, dict]:
    """`{metric: its output dict (+ "seconds")}` for each of `metrics` on generated dSprites:
    drawn and encoded on demand through `representation`, or looked up in `encoded` (every
    image's code; sampled_mig needs it, with the posterior's standard deviations)."""
    sampler = encoded.sampler if encoded is not None else DSprites()
    results = {}
    for name in metrics:
        start = time.perf_counter()
        if name == "sampled_mig":
            if encoded is None or encoded.stds is None:
                raise ValueError(
                    "sampled_mig needs every image's posterior: a VAE's, encoded with EncodedDSprites.encode(model); "
                    "this model has no posterior (score it with mig, the binned estimator, instead)"
                )
            sizes = {"num_samples": sampled_mig_samples} if sampled_mig_samples else (FAST_SIZES[name] if fast else {})
            results[name] = dm.sampled_mutual_information_gap(
                encoded.means, encoded.stds, FACTOR_SIZES, SAMPLED_MIG_FACTORS, random_state=seed, **sizes
            )
        else:
            classifier = {"classifier_random_state": seed} if name in ("dci", "sap") else {}
            sizes = FAST_SIZES[name] if fast else {}
            results[name] = SAMPLED_FUNCTIONS[name](representation, sampler, seed, **sizes, **classifier)
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
        headline = ", ".join(f"{key} {results[name][key]:.4f}" for key, _ in HEADLINES[name])
        log(f"{name}: {headline} ({results[name]['seconds']:.1f} s)")
    return results


def headline_metrics(results: dict[str, dict]) -> dict[str, float]:
    return {label: float(results[name][key]) for name in results for key, label in HEADLINES[name]}


def markdown(results: dict[str, dict], fast: bool) -> str:
    """The scores as a markdown table, with the settings they were measured at."""
    sizes = "--fast sizes (noisier; not comparable with published numbers)" if fast else "disentanglement_lib's sizes"
    lines = ["| metric | score |", "|---|---:|"]
    lines += [f"| {label} | {value:.4f} |" for label, value in headline_metrics(results).items()]
    lines.append("")
    lines.append(f"Generated dSprites (latentcode.data.dsprites), posterior mean, {sizes}.")
    if "sampled_mig" in results:
        lines.append(
            f"sampled_mig: Chen et al. (2018)'s estimator (posterior samples of every image, shape left out), "
            f"{results['sampled_mig']['num_samples']} entropy samples; not comparable with mig's binned estimate."
        )
    return "\n".join(lines) + "\n"


def mutual_information_heatmap(matrix, factor_names=FACTOR_NAMES, cell=(72, 26)) -> PIL.Image.Image:
    """`matrix` `[D, F]` (values in [0, 1]) as a table of shaded cells, latent dimensions down and
    factors across, each cell printed with its value; darker is more. Returns an RGB image."""
    matrix = np.clip(np.asarray(matrix, dtype=np.float64), 0.0, 1.0)
    font = PIL.ImageFont.load_default()
    left, top = 70, 46
    width, height = left + cell[0] * matrix.shape[1] + 10, top + cell[1] * matrix.shape[0] + 10
    image = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(image)
    draw.text((6, 4), "mutual information / factor entropy", fill="black", font=font)
    for j, name in enumerate(factor_names):
        draw.text((left + j * cell[0] + 4, top - 16), name[: cell[0] // 6], fill="black", font=font)
    for i, row in enumerate(matrix):
        draw.text((6, top + i * cell[1] + 7), f"dim {i}", fill="black", font=font)
        for j, value in enumerate(row):
            shade = int(round(255 * (1 - value)))
            box = [left + j * cell[0], top + i * cell[1], left + (j + 1) * cell[0] - 2, top + (i + 1) * cell[1] - 2]
            draw.rectangle(box, fill=(shade, shade, 255), outline=(200, 200, 200))
            draw.text((box[0] + 6, box[1] + 7), f"{value:.2f}", fill="black" if value < 0.6 else "white", font=font)
    return image


def update_model_card(model_dir: Path, table: str) -> Path:
    """Put `table` into `model_dir`/README.md between the markers (replacing an earlier table)."""
    card = model_dir / "README.md"
    text = card.read_text() if card.exists() else ""
    section = f"{MARKER_START}\n## Disentanglement (generated dSprites)\n\n{table}{MARKER_END}\n"
    pattern = re.compile(re.escape(MARKER_START) + ".*?" + re.escape(MARKER_END) + "\n?", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    card.write_text(text.lstrip("\n"))
    return card


def write_outputs(args, results: dict[str, dict], num_images: int, details: dict) -> dict[str, Path]:
    """disentanglement.json / .md / _dimensions.png in `args.output_dir` (and the model card)."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(results, args.fast)
    per_dimension = None
    if "mig" in results:
        information = np.asarray(results["mig"]["mutual_information"])  # [D, F]
        per_dimension = {f"mutual_information_{name}": information[:, j] for j, name in enumerate(FACTOR_NAMES)}
    report = metrics_report(
        kind="disentanglement",
        model=args.pretrained_model_name_or_path,
        data={"source": "generated dSprites (latentcode.data.dsprites)", "factors": list(FACTOR_NAMES),
              "num_images": num_images},
        metrics=headline_metrics(results),
        per_dimension=per_dimension,
        notes=["--fast sample sizes: noisier, not comparable with published numbers"] if args.fast else [],
        details=details | {"results": results},
    )  # fmt: skip
    paths = {"json": write_metrics_json(report, output_dir / "disentanglement.json")}
    paths["markdown"] = output_dir / "disentanglement.md"
    paths["markdown"].write_text(table)
    if "mig" in results:
        paths["figure"] = output_dir / "disentanglement_dimensions.png"
        mutual_information_heatmap(results["mig"]["mutual_information"]).save(paths["figure"])
    if args.update_model_card:
        model_dir = Path(args.pretrained_model_name_or_path)
        if not model_dir.is_dir():
            raise ValueError(f"--update_model_card writes MODEL/README.md: {model_dir} is not a local folder")
        paths["model_card"] = update_model_card(model_dir, table)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    metrics = _chosen_metrics(args.metrics)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_pretrained_model(args.pretrained_model_name_or_path, revision=args.revision).to(device)
    size = model.config.sample_size
    if size != 64 or model.config.in_channels not in (1, 3):
        raise ValueError(
            f"dSprites images are 64x64 grey-scale; the model takes {model.config.in_channels} channels at "
            f"sample_size {size}: score a model trained at 64x64 with 1 (or 3) channels"
        )
    if "sampled_mig" in metrics and model.config.model_type != VAEConfig.model_type:
        raise ValueError(
            f"sampled_mig estimates MIG from samples of a VAE's posterior; {args.pretrained_model_name_or_path} is a "
            f"{model.config.model_type} without one: leave sampled_mig out (mig scores its code)"
        )
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    log(f"scoring {args.pretrained_model_name_or_path} on generated dSprites: {', '.join(metrics)}")
    start = time.perf_counter()
    encoded = None
    if "sampled_mig" in metrics or images_drawn(metrics, args.fast) > NUM_IMAGES:
        log(f"encoding all {NUM_IMAGES} images once (the metrics would draw {images_drawn(metrics, args.fast)})")
        encoded = EncodedDSprites.encode(model, device=device, log=log)
        representation = CountingRepresentation(encoded.representation)
    else:
        representation = CountingRepresentation(dm.posterior_mean_representation(model, device))
    results = score(representation, metrics, args.seed, args.fast, log, encoded, args.sampled_mig_samples)
    details = {
        "seed": args.seed, "fast": args.fast, "device": device, "seconds": round(time.perf_counter() - start, 2),
        "encoded_every_image": encoded is not None,
    }  # fmt: skip
    paths = write_outputs(args, results, NUM_IMAGES if encoded is not None else representation.images, details)
    print(markdown(results, args.fast))
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
