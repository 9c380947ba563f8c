"""The converted published checkpoints: taef2 on the 24 Kodak photos at full resolution (PSNR,
encode / decode images/s) and the disentangling-vae models on the shipped faces and digits
(per-dimension KL, reconstruction PSNR, traversal grids).

    PYTHONPATH=src python benchmarks/bench_pretrained.py --part taef2 --threads 1
    PYTHONPATH=src python benchmarks/bench_pretrained.py --part beta_vae
    PYTHONPATH=src python benchmarks/bench_pretrained.py --part kodak --model PATH --name NAME   # any model, as taef2

Results go to benchmarks/results/pretrained/ (JSON, and the traversal PNGs rendered with
`latentcode.traversal.main`, the `latentcode-traverse` command).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel

import latentcode.modeling  # noqa: F401  (registers the models with AutoModel)
from latentcode.conversion.disentangling_vae import from_disentangling_vae
from latentcode.conversion.taesd import from_taesd
from latentcode.evaluation.metrics import psnr
from latentcode.image_processing import LatentCodeImageProcessor, pixels_to_uint8
from latentcode.traversal import main as traverse
from latentcode.traversal import per_dimension_kl

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "results" / "pretrained"


def read_pixels(path: Path, mode: str) -> torch.Tensor:
    """One image as `[1, C, H, W]` in [-1, 1]."""
    array = np.asarray(Image.open(path).convert(mode), dtype=np.float32)
    pixels = torch.from_numpy(array)
    pixels = pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)
    return (pixels / 127.5 - 1)[None].contiguous()


def uint8_psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> float:
    """PSNR of the reconstruction saved as 8-bit pixels (what a user gets) against the original."""
    as_pixels = pixels_to_uint8(reconstruction).float() / 127.5 - 1
    return psnr(as_pixels, original).item()


def taef2() -> torch.nn.Module:
    folder = SHARED / "pretrained" / "taesd"
    return from_taesd(folder / "taef2_encoder.pth", folder / "taef2_decoder.pth")


@torch.no_grad()
def bench_kodak(model, name: str, first: int, last: int) -> dict:
    """Kodak photos `first` .. `last` (1-based) through `model.encode` then `model.decode`; each
    row is also appended to `<name>_rows.jsonl`, so that several processes can share the photos
    and `--part <name>_summary` (taef2) sums them up."""
    rows = []
    for path in sorted((SHARED / "datasets" / "kodak").glob("kodim*.png"))[first - 1 : last]:
        original = read_pixels(path, "RGB")
        # CPU time of this process as well as wall time: on a shared machine the wall clock
        # measures the other processes too, the CPU time (one thread) the model alone
        clocks = [(time.perf_counter(), time.process_time())]
        latents = model.encode(original).latents
        clocks.append((time.perf_counter(), time.process_time()))
        reconstruction = model.decode(latents).sample
        clocks.append((time.perf_counter(), time.process_time()))
        (wall_0, cpu_0), (wall_1, cpu_1), (wall_2, cpu_2) = clocks
        rows.append(
            dict(
                image=path.name,
                size=list(original.shape[2:]),
                psnr_db=uint8_psnr(reconstruction, original),
                encode_s=wall_1 - wall_0,
                decode_s=wall_2 - wall_1,
                encode_cpu_s=cpu_1 - cpu_0,
                decode_cpu_s=cpu_2 - cpu_1,
            )
        )
        print(rows[-1], flush=True)
        with open(RESULTS / f"{name}_rows.jsonl", "a") as file:
            file.write(json.dumps(rows[-1]) + "\n")
    return summarise_kodak(rows, name)


def summarise_kodak(rows: list[dict], name: str = "taef2") -> dict:
    rows = sorted({row["image"]: row for row in rows}.values(), key=lambda row: row["image"])
    return dict(
        model=name,
        images=len(rows),
        mean_psnr_db=float(np.mean([r["psnr_db"] for r in rows])),
        encode_images_per_s=len(rows) / sum(r["encode_s"] for r in rows),
        decode_images_per_s=len(rows) / sum(r["decode_s"] for r in rows),
        encode_images_per_cpu_s=len(rows) / sum(r["encode_cpu_s"] for r in rows),
        decode_images_per_cpu_s=len(rows) / sum(r["decode_cpu_s"] for r in rows),
        rows=rows,
    )


@torch.no_grad()
def bench_beta_vae(work: Path) -> dict:
    results = {}
    for dataset, mode in (("celeba", "RGB"), ("mnist", "L")):
        samples = SHARED / "datasets" / f"{dataset}-samples"
        images = torch.cat([read_pixels(path, mode) for path in sorted(samples.glob("*.png"))])
        for loss in ("VAE", "betaH", "betaB", "factor", "btcvae"):
            name = f"{loss}_{dataset}"
            model = from_disentangling_vae(SHARED / "pretrained" / "disentangling-vae" / name)
            kl = per_dimension_kl(model, images)
            reconstruction = model(images).sample  # eval mode: through the posterior mean
            results[name] = dict(
                kl_per_dimension=[round(v, 3) for v in kl.tolist()],
                kl_total=kl.sum().item(),
                active_dimensions=int((kl > 0.1).sum()),
                psnr_db=float(np.mean([uint8_psnr(r[None], x[None]) for r, x in zip(reconstruction, images)])),
            )
            print(name, results[name], flush=True)
            if dataset == "celeba":
                model.save_pretrained(work / name)
                LatentCodeImageProcessor.from_model_config(model.config).save_pretrained(work / name)
                # one row per dimension 0..9, values -2.5 .. 2.5 around the prior mean; the
                # repository keeps betaB_celeba's grid (benchmarks/README.md describes its rows)
                folder = RESULTS if name == "betaB_celeba" else work
                traverse(
                    ["--pretrained_model_name_or_path", str(work / name), "--steps", "7", "--span", "2.5"]
                    + ["--output_path", str(folder / f"traversal_{name}.png")]
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("taef2", "taef2_summary", "beta_vae", "kodak"), required=True)
    parser.add_argument("--model", default=None, help="--part kodak: a saved latentcode model (folder or Hub id)")
    parser.add_argument("--name", default=None, help="--part kodak: the name of its results (default: the folder's)")
    parser.add_argument("--kodak_images", type=int, nargs=2, default=(1, 24), help="first and last Kodak photo")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work_dir", default="/tmp/bench_pretrained", help="where converted models are written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    name = "taef2" if args.part.startswith("taef2") else args.part
    if args.part == "taef2":
        result = bench_kodak(taef2(), name, *args.kodak_images)
    elif args.part == "taef2_summary":
        lines = (RESULTS / "taef2_rows.jsonl").read_text().splitlines()
        result = summarise_kodak([json.loads(line) for line in lines])
    elif args.part == "kodak":
        if args.model is None:
            raise SystemExit("--part kodak needs --model PATH (a saved latentcode model)")
        name = args.name or Path(args.model).name
        model = AutoModel.from_pretrained(args.model).eval()
        result = bench_kodak(model, name, *args.kodak_images)
    else:
        result = bench_beta_vae(Path(args.work_dir))
    header = dict(
        machine=platform.processor() or platform.machine(),
        threads=args.threads,
        torch=torch.__version__,
        seconds=round(time.time() - started, 1),
    )
    if args.part in ("taef2", "kodak") and tuple(args.kodak_images) != (1, 24):
        return  # a share of the photos: its rows are in taef2_rows.jsonl
    (RESULTS / f"{name}.json").write_text(json.dumps(dict(header=header, result=result), indent=1))


if __name__ == "__main__":
    main()
