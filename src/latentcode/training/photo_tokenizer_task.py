"""`training/train_photo_tokenizer.py`'s task: a VQ-VAE made from a trained continuous autoencoder
(`VQVAEModel.from_autoencoder`) trains its quantiser, learned projections and corrector on the
source's latents (`latent_space_loss`), the encoder and decoder frozen (with
`objective.finetune_decoder`, the decoder trains too, against a frozen copy of the source's);
validated on full-size photos through the decoder (PSNR, SSIM, bits per pixel, codebook usage).

Here rather than in the script so that the script's options (`--help`) load without torch."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..data import image_data_from_config
from ..evaluation.metrics import psnr, ssim
from ..model_loading import load_pretrained_model
from ..modeling import LatentCodePreTrainedModel, VQVAEModel
from ..modeling.from_autoencoder import (
    SourceDecoder,
    continuous_latents,
    fit_projections,
    latent_space_loss,
    start_decoder_finetune,
)
from ..modules.latent_adapters import decoder_parts
from .codes import code_data
from .engine import Engine, Part, TrainingTask, data_source, training_report
from .model_card import render_model_card

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class LatentSpaceObjective(nn.Module):
    """The VQ-VAE with [`latent_space_loss`] as its forward pass: the engine's trained module (a
    DDP wrapper synchronises the gradients of what a forward pass used, so the loss must be one)."""

    def __init__(
        self, vqvae: VQVAEModel, decoder_loss: dict | None = None, target_decoder: SourceDecoder | None = None
    ):
        """`decoder_loss`: `latent_space_loss`'s decoder_loss_* arguments (None: latent loss only);
        `target_decoder`: the decoder loss's target while the VQ-VAE's decoder is fine-tuned (a
        frozen copy of the source's, `start_decoder_finetune`; None: the VQ-VAE's frozen decoder).
        A submodule: it moves with the objective and is in its checkpoints (the source's weights,
        which a resume restores unchanged); it has no trainable weight, and only the VQ-VAE is
        saved as the model."""
        super().__init__()
        self.vqvae = vqvae
        self.decoder_loss = decoder_loss or {}
        self.target_decoder = target_decoder

    def forward(self, latents: torch.Tensor):
        """Source latents `[B, L, h, w]` -> `LatentSpaceLoss`."""
        return latent_space_loss(self.vqvae, latents, **self.decoder_loss, target_decoder=self.target_decoder)


def tokenizer_from_source(source, options) -> tuple[VQVAEModel, bool]:
    """`(the VQ-VAE to train, whether its projections are fitted already)`: `source` made into one
    with `options` (the script's `tokenizer` group), or `source` itself when it already is one."""
    if not isinstance(source, LatentCodePreTrainedModel):
        raise ValueError(f"the source must be a latentcode AutoEncoder, VAE or VQ-VAE, got {type(source).__name__}")
    if source.has_tokens:  # a VQ-VAE: continue it if it was made from a continuous model
        record = source.config.source_autoencoder
        if record is None:
            raise ValueError(
                "the source is a VQ-VAE that was not made from a continuous autoencoder (config.source_autoencoder is "
                "None); give the AutoEncoder or VAE to quantise, or train this VQ-VAE with training/train.py"
            )
        if not record.get("frozen", True):
            raise ValueError(
                "the source VQ-VAE's encoder and decoder are not frozen (source_autoencoder['frozen'] is False), and "
                "latent-space training would leave them without gradients: call vqvae.freeze_autoencoder() and save it"
            )
        return source, True
    vqvae = VQVAEModel.from_autoencoder(
        source,
        quantizer=options.quantizer,
        codebook_size=options.codebook_size,
        codebook_dim=options.codebook_dim,
        num_quantizers=options.num_quantizers,
        latent_patch_size=options.latent_patch_size,
        quantizer_config=options.quantizer_config or None,
        corrector_config=options.corrector_config,
    )
    return vqvae, not options.fit_projections


def check_decoder_target(vqvae: VQVAEModel, objective) -> None:
    """Refuse a loss through the decoder (`objective`: the script's `objective` group) of a VQ-VAE
    whose decoder was fine-tuned already: that loss's target, the source decoder's image of the
    latent, is no longer in the model."""
    record = vqvae.config.source_autoencoder
    if objective.decoder_loss_weight > 0 and record["decoder_finetuned"]:
        raise ValueError(
            "the source VQ-VAE's decoder was fine-tuned already (source_autoencoder['decoder_finetuned'] is True), so "
            "the decoder loss's target, the source decoder's image of the latent, is not in it: continue it with "
            "--objective.decoder_loss_weight 0, start again from the continuous source "
            f"({record['name_or_path'] or 'name_or_path not recorded'}), or resume the fine-tune's checkpoint"
        )


def check_latent_patches(vqvae: VQVAEModel, data) -> None:
    """Refuse training crops that do not split into the tokens' patches of latent positions
    (`data`: the script's `data` group): `latent_crop` must be a multiple of `latent_patch_size`,
    and without one the whole grid, `resolution` pixels, of the model's `downsampling_factor`."""
    patch, factor = vqvae.config.latent_patch_size, vqvae.downsampling_factor
    if data.latent_crop is not None and data.latent_crop % patch:
        raise ValueError(
            f"latent_crop={data.latent_crop} does not split into the tokens' {patch}x{patch} patches of latent "
            f"positions (latent_patch_size={patch}): use a multiple of {patch}, e.g. {data.latent_crop // patch * patch or patch}"
        )
    if data.latent_crop is None and data.resolution % factor:
        raise ValueError(
            f"resolution={data.resolution} is not a multiple of the model's downsampling factor {factor} (one token "
            f"per {factor}x{factor} pixels), and without latent_crop each step trains on the whole grid: set "
            f"resolution to a multiple of {factor}, or set latent_crop"
        )


def random_latent_crops(latents: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """A random `size` x `size` crop of each latent grid `[B, L, h, w]` -> `[B, L, size, size]`
    (offsets drawn from `generator`, on the CPU); `size` None: the grids unchanged."""
    height, width = latents.shape[-2:]
    if size is None or (size == height and size == width):
        return latents
    if size > height or size > width:
        raise ValueError(
            f"latent_crop {size} is larger than the latent grid {height}x{width}; lower --latent_crop or raise "
            "--resolution (the grid is resolution / the source's downsampling factor)"
        )
    tops = torch.randint(0, height - size + 1, (len(latents),), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (len(latents),), generator=generator).tolist()
    return torch.stack([grid[:, t : t + size, s : s + size] for grid, t, s in zip(latents, tops, lefts)])


def load_photos(folder: str, count: int, factor: int, channels: int = 3) -> list[torch.Tensor]:
    """The first `count` photos of `folder` by name, each `[1, channels, H, W]` in [-1, 1] (RGB, or
    grey for 1 channel) at full size, cropped at the bottom / right to a multiple of `factor`
    pixels (the model's downsampling)."""
    import numpy as np
    from PIL import Image

    paths = sorted(path for path in Path(folder).iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)[:count]
    if not paths:
        raise ValueError(f"--validation_data_dir {folder!r} holds no photos ({', '.join(PHOTO_SUFFIXES)} files)")
    photos = []
    for path in paths:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32).reshape(
                image.height, image.width, channels
            )
        height, width = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
        pixels = torch.from_numpy(np.ascontiguousarray(array[:height, :width])).permute(2, 0, 1) / 127.5 - 1
        photos.append(pixels[None])
    return photos


@torch.no_grad()
def photo_metrics(vqvae: VQVAEModel, photos: list[torch.Tensor]) -> dict:
    """Mean PSNR and SSIM (dB / unitless, decoded tokens against the photo), bits per pixel and
    tokens per image, and codebook usage (the fraction of each codebook's codes that the photos'
    tokens use, averaged over residual levels) of `photos` (`load_photos`)."""
    totals = {"psnr": 0.0, "ssim": 0.0, "bits_per_pixel": 0.0, "tokens_per_image": 0.0}
    used: list[set] = []
    for pixels in photos:
        pixels = pixels.to(vqvae.device)
        encoded = vqvae.encode(pixels)
        reconstruction = vqvae.decode_indices(encoded.indices).sample.clamp(-1, 1)
        totals["psnr"] += psnr(reconstruction, pixels).item()
        totals["ssim"] += ssim(reconstruction, pixels).item()
        totals["bits_per_pixel"] += vqvae.code_size(encoded).bits_per_pixel(*pixels.shape[-2:]).item()
        totals["tokens_per_image"] += encoded.indices[0].numel()
        levels = encoded.indices.reshape(-1, encoded.indices.shape[-1] if encoded.indices.dim() == 4 else 1)
        used = used or [set() for _ in range(levels.shape[1])]
        for level, codes in zip(used, levels.T):
            level.update(codes.tolist())
    metrics = {name: value / len(photos) for name, value in totals.items()}
    metrics["codebook_usage"] = sum(len(level) for level in used) / (len(used) * vqvae.codebook_size)
    return metrics


def trained_parameter_groups(vqvae: VQVAEModel, objective, learning_rate: float) -> tuple[list[dict], tuple]:
    """The optimiser's parameter groups of what trains, and each group's rate as a factor of the
    run's: the parts trained from scratch (quantiser, projections, corrector) at 1, and with
    `objective.finetune_decoder` the decoding side (`decoder_parts`) at
    `decoder_learning_rate / learning_rate` (1 without one)."""
    decoder = set()
    if objective.finetune_decoder:
        decoder = {id(p) for part in decoder_parts(vqvae).values() for p in part.parameters()}
    trained = [p for p in vqvae.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if id(p) not in decoder]}]
    if not decoder:
        return groups, (1.0,)
    groups.append({"params": [p for p in trained if id(p) in decoder]})
    decoder_rate = objective.decoder_learning_rate or learning_rate
    return groups, (1.0, decoder_rate / learning_rate)


class PhotoTokenizerTask(TrainingTask):
    """Trains the quantiser, projections and corrector of a VQ-VAE made from a frozen continuous
    autoencoder on its latents (with `objective.finetune_decoder`, its decoder too): its model,
    loss, validation and saved tokenizer, for the [`Engine`]."""

    def __init__(self, config):
        """`config`: the parsed options of `training/train_photo_tokenizer.py` (its `PhotoTokenizerConfig`)."""
        self.config = config
        self.validation_latents = None
        self.photos: list[torch.Tensor] = []

    def build(self, engine: Engine):
        config, accelerator = self.config, engine.accelerator
        source = load_pretrained_model(config.pretrained_model_name_or_path, cache_dir=config.data.cache_dir)
        vqvae, self.fitted = tokenizer_from_source(source, config.tokenizer)
        check_latent_patches(vqvae, config.data)
        check_decoder_target(vqvae, config.objective)
        self.vqvae = vqvae.to(engine.device)
        # The fine-tune's target: the source's decoder as loaded here, before a resume loads the
        # checkpoint (which holds the same target weights): never the fine-tuned decoder.
        target_decoder = start_decoder_finetune(vqvae) if config.objective.finetune_decoder else None
        batches, validation = self.data(source, accelerator.process_index, accelerator.num_processes)
        self.validation_batch = validation
        # Crop offsets: each process its own stream, saved in checkpoints (state / load_state).
        self.generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)
        if config.data.validation_data_dir is not None and accelerator.is_main_process:
            self.photos = load_photos(
                config.data.validation_data_dir,
                config.data.num_validation_photos,
                vqvae.downsampling_factor,
                vqvae.config.in_channels,
            )
        optimization = config.optimization
        groups, group_factors = trained_parameter_groups(vqvae, config.objective, optimization.learning_rate)
        trainable = [p for group in groups for p in group["params"]]
        optimizer = torch.optim.AdamW(
            groups,
            lr=optimization.learning_rate,
            betas=(optimization.adam_beta1, optimization.adam_beta2),
            weight_decay=optimization.adam_weight_decay,
            eps=optimization.adam_epsilon,
        )
        accelerator.print(
            f"photo tokenizer: {sum(p.numel() for p in trainable) / 1e6:.3f}M trained parameters of "
            f"{sum(p.numel() for p in vqvae.parameters()) / 1e6:.3f}M, {vqvae.config.quantizer} with "
            f"{vqvae.codebook_size} codes"
        )
        objective = config.objective
        decoder_loss = {
            "decoder_loss_weight": objective.decoder_loss_weight,
            "decoder_loss_crops": objective.decoder_loss_crops,
            "decoder_loss_size": objective.decoder_loss_size,
        }
        objective_module = LatentSpaceObjective(vqvae, decoder_loss, target_decoder)
        engine.prepare([Part("tokenizer", objective_module, optimizer, group_factors=group_factors)])
        return batches

    def data(self, source, rank: int, world_size: int):
        """The training batches and the held-out batch: pixels `[B, C, H, W]`, or with
        `--latents_dataset` the source's stored latents `[B, L, h, w]` (a VAE's posterior mean)."""
        config = self.config
        resolution = config.data.resolution
        if config.data.latents_dataset is None:
            return image_data_from_config(config, self.vqvae.config.in_channels, resolution, rank, world_size)
        if source.has_tokens:
            raise ValueError(
                "--latents_dataset holds the latents of the continuous source model, and this run continues a VQ-VAE "
                "made from one (whose tokenised data would be tokens): drop --latents_dataset to encode the images on "
                "the fly, or start from the continuous model"
            )
        shape = list(source.stored_code_shape(resolution))
        column = next(iter(source.stored_columns))  # an AutoEncoder's latents, a VAE's posterior mean

        def stored_latents(rows: dict) -> torch.Tensor:
            return rows[column].float().unflatten(1, shape)

        return code_data(config.data.latents_dataset, source, config, stored_latents, shape, rank, world_size)

    @torch.no_grad()
    def latents(self, batch: torch.Tensor) -> torch.Tensor:
        """The source's latents `[B, L, h, w]` of a batch: stored, or encoded by the frozen encoder."""
        if self.config.data.latents_dataset is not None:
            return batch
        return continuous_latents(self.vqvae, batch)

    def compute_loss(self, engine: Engine, batch: torch.Tensor):
        latents = random_latent_crops(self.latents(batch), self.config.data.latent_crop, self.generator)
        latents = latents.to(engine.device)
        if not self.fitted:  # the first step of a new run; a resumed run has the fitted weights
            fit_projections(self.vqvae, engine.accelerator.gather(latents))
            self.fitted = True
        result = engine.parts[0].module(latents)  # the first training batch also fits the codebooks (k-means)
        return result.loss, {
            "loss": result.loss,
            "latent_loss": result.latent_loss,
            "quantizer_loss": result.quantizer_loss,
            **({"decoder_loss": result.decoder_loss} if self.config.objective.decoder_loss_weight > 0 else {}),
        }

    def state(self, engine: Engine) -> tuple[dict, dict]:
        return {"projections_fitted": self.fitted}, {"crop_generator": self.generator.get_state()}

    def load_state(self, engine: Engine, trainer_state: dict, process_state: dict) -> None:
        self.fitted = trainer_state["projections_fitted"]
        self.generator.set_state(process_state["crop_generator"])

    def validate(self, engine: Engine) -> dict:
        vqvae = self.vqvae.eval()
        metrics = {}
        if self.validation_batch is not None and len(self.validation_batch):
            if self.validation_latents is None:
                self.validation_latents = self.latents(self.validation_batch.to(engine.device))
            with torch.no_grad():
                metrics["validation_latent_loss"] = latent_space_loss(vqvae, self.validation_latents).latent_loss.item()
        if self.photos:
            metrics.update(photo_metrics(vqvae, self.photos))
        vqvae.train()
        engine.accelerator.print(f"step {engine.global_step}: {metrics}")
        return metrics

    def finish(self, engine: Engine, summary: dict) -> dict:
        output_dir = engine.output_dir
        metrics = self.validate(engine)
        vqvae = engine.model.vqvae
        vqvae.save_pretrained(output_dir)
        from ..image_processing import LatentCodeImageProcessor

        LatentCodeImageProcessor.from_model_config(vqvae.config, size=self.config.data.resolution).save_pretrained(
            output_dir
        )
        source = self.config.data.latents_dataset or data_source(self.config)
        (output_dir / "README.md").write_text(photo_tokenizer_card(self.config, vqvae, metrics, summary, source))
        return training_report(
            engine,
            summary,
            kind="photo-tokenizer",
            metrics=metrics,
            num_images=len(self.photos),
            source=self.config.data.validation_data_dir or source,
            details={
                "source_autoencoder": vqvae.config.source_autoencoder,
                "training_data": source,
                "codebook_size": vqvae.codebook_size,
            },
        )


def format_metric(metrics: dict, name: str, digits: int) -> str:
    value = metrics.get(name)
    return (
        "not measured" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def objective_description(objective) -> str:
    """The trained loss in words, for the model card."""
    if objective.decoder_loss_weight == 0:
        return "the squared error of the latent estimate alone"
    through = (
        "between the fine-tuned decoder's images of the estimate and the source decoder's images of the latent"
        if objective.finetune_decoder
        else "through the frozen decoder"
    )
    return (
        f"the squared error of the latent estimate plus {objective.decoder_loss_weight:g} x the squared error "
        f"{through} on {objective.decoder_loss_crops} crops of {objective.decoder_loss_size}x"
        f"{objective.decoder_loss_size} latents per step"
    )


def pretrained_parts_description(source: dict) -> str:
    """What became of the source's encoder and decoder, for the model card (`source`: the
    VQ-VAE's `config.source_autoencoder`)."""
    if source["decoder_finetuned"]:
        return (
            "the encoder frozen and unchanged; the decoder fine-tuned on the quantised code against the source "
            "decoder's output, so it is no longer the source's decoder"
        )
    return "both frozen and unchanged"


def token_area(vqvae: VQVAEModel) -> str:
    """What one token codes, for the model card: its pixels and latent positions."""
    patch, factor = vqvae.config.latent_patch_size, vqvae.downsampling_factor
    positions = "one latent position" if patch == 1 else f"{patch}x{patch} latent positions"
    return f"{factor}x{factor} pixels ({positions})"


def photo_tokenizer_card(config, vqvae: VQVAEModel, metrics: dict, summary: dict, training_data: str) -> str:
    """The model card (`model_cards/photo_tokenizer.md` filled in) of a trained photo tokenizer."""
    source = vqvae.config.source_autoencoder
    values = {
        "source_model": config.pretrained_model_name_or_path,
        "source_family": source["family"],
        "source_licence": config.tokenizer.source_licence,
        "pretrained_parts": pretrained_parts_description(source),
        "training_data": training_data,
        "token_area": token_area(vqvae),
        "quantizer": vqvae.config.quantizer,
        "codebook_size": vqvae.codebook_size,
        "num_quantizers": vqvae.config.num_quantizers or 1,
        "corrector": vqvae.config.corrector_config or "none",
        "objective": objective_description(config.objective),
        "steps": summary["global_step"],
        "train_seconds": summary["train_seconds"],
        "validation_data": config.data.validation_data_dir or "none given",
        "num_photos": config.data.num_validation_photos if config.data.validation_data_dir else 0,
        "psnr": format_metric(metrics, "psnr", 2),
        "ssim": format_metric(metrics, "ssim", 4),
        "bits_per_pixel": format_metric(metrics, "bits_per_pixel", 4),
        "tokens_per_image": format_metric(metrics, "tokens_per_image", 0),
        "codebook_usage": format_metric(metrics, "codebook_usage", 3),
        "repo_id": config.reporting.hub_model_id or config.output_dir,
    }
    return render_model_card("photo_tokenizer", values)
