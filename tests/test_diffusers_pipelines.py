"""Our VQ-VAE and VAE as the `vqvae` of diffusers' LDMPipeline: same images as with diffusers'
own VQModel / AutoencoderKL, exact save/load round trips, loading in a fresh process, and the
latent-diffusion training script."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    LDMPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from helpers import load_script, reset_accelerate_state, tiny_model
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import latentcode
from latentcode.families import FAMILIES, get_family
from latentcode.latent_diffusion import diffusion_loss, latent_diffusion_pipeline, latent_unet

REPO = Path(__file__).resolve().parent.parent
# The families with a diffusers counterpart.
CONVERTIBLE = tuple(name for name, family in FAMILIES.items() if family.diffusers_class_name is not None)


def generate(pipeline) -> np.ndarray:
    """Two images `[2, 16, 16, 3]` in [0, 1] from a fixed generator, 3 DDIM steps."""
    return pipeline(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np"
    ).images


def tiny_pipeline(family: str) -> LDMPipeline:
    model = tiny_model(family, scaling_factor=0.7)
    torch.manual_seed(1)
    unet = latent_unet(model.config, block_out_channels=(16, 32), norm_num_groups=8).eval()
    return latent_diffusion_pipeline(model, unet)


def test_latent_diffusion_pipeline_does_not_clip_latents():
    """Scaled latents have unit variance: a third of their values lie outside [-1, 1], where
    diffusers' default DDIM scheduler would clip the predicted latents (issue 33, item 7)."""
    scheduler = tiny_pipeline("vae").scheduler
    assert type(scheduler).__name__ == "DDIMScheduler" and scheduler.config.clip_sample is False


@pytest.fixture(scope="module")
def saved_pipelines(tmp_path_factory):
    """For each family: the folder of a saved pipeline and the images it generated before saving."""
    saved = {}
    for family in CONVERTIBLE:
        pipeline = tiny_pipeline(family)
        pipeline.set_progress_bar_config(disable=True)
        folder = tmp_path_factory.mktemp(f"ldm_{family}")
        images = generate(pipeline)
        pipeline.save_pretrained(folder)
        saved[family] = (folder, images)
    return saved


@pytest.mark.parametrize("family", CONVERTIBLE)
def test_our_model_gives_the_images_of_the_native_diffusers_model(family):
    """The same pipeline with `model.to_diffusers()` as `vqvae` generates the same images, so
    our model behaves in LDMPipeline exactly as diffusers' own VQModel / AutoencoderKL."""
    ours = tiny_pipeline(family)
    # The untrained UNet's unclipped predictions drive the latents to |z| ~ 50, 10^4 times the
    # random codebook's norms, where diffusers' float32 distances pick another code in near-ties
    # (measured: ours matches the float64 nearest code, VQModel misses 1 of 128). Clipping keeps the
    # latents where both searches are exact, which is what this comparison is about.
    ours.scheduler = type(ours.scheduler).from_config(ours.scheduler.config, clip_sample=True)
    native_model = ours.vqvae.to_diffusers().eval()
    assert isinstance(native_model, get_family(family).diffusers_class)
    native = LDMPipeline(vqvae=native_model, unet=ours.unet, scheduler=ours.scheduler)
    for pipeline in (ours, native):
        pipeline.set_progress_bar_config(disable=True)
    images = generate(ours)
    assert images.shape == (2, 16, 16, 3) and images.std() > 0.01
    np.testing.assert_allclose(images, generate(native), atol=1e-5)


@pytest.mark.single_thread  # compares with images the module fixture made on one thread
@pytest.mark.parametrize("family", CONVERTIBLE)
def test_pipeline_save_load_round_trip_is_exact(saved_pipelines, family):
    folder, images = saved_pipelines[family]
    model_index = json.loads((folder / "model_index.json").read_text())
    # diffusers records components from outside its own libraries by their module path.
    assert model_index["vqvae"] == [get_family(family).model_class.__module__, get_family(family).model_class.__name__]
    assert model_index["unet"] == ["diffusers", "UNet2DModel"]
    loaded = DiffusionPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is LDMPipeline and type(loaded.vqvae) is get_family(family).model_class
    assert loaded.vqvae.config.scaling_factor == 0.7
    assert np.array_equal(generate(loaded), images)


@pytest.mark.single_thread
def test_a_pipeline_recording_the_models_package_loads(saved_pipelines, tmp_path):
    """Pipelines saved while the models lived in `latentcode.modeling` itself record that module;
    they load as those recording a family's own module do."""
    import shutil

    folder, images = saved_pipelines["vqvae"]
    shutil.copytree(folder, tmp_path / "pipeline")
    index_path = tmp_path / "pipeline" / "model_index.json"
    model_index = json.loads(index_path.read_text())
    model_index["vqvae"] = ["latentcode.modeling", "VQVAEModel"]
    index_path.write_text(json.dumps(model_index))
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vqvae) is latentcode.VQVAEModel
    assert np.array_equal(generate(loaded), images)


@pytest.mark.single_thread
def test_pipelines_load_in_a_fresh_process(saved_pipelines, tmp_path):
    """A new interpreter: loading fails with diffusers' explanation until `import latentcode.modeling`
    (a bare `import latentcode` is lazy: it does not load the models), then gives the same images as
    before saving."""
    folders = {family: str(folder) for family, (folder, _) in saved_pipelines.items()}
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        folders = {folders!r}
        try:
            DiffusionPipeline.from_pretrained(folders["vqvae"])
            sys.exit("loaded without importing latentcode")
        except ValueError as error:
            assert "import latentcode.modeling" in str(error), error
        import latentcode
        try:  # lazy: the package alone does not load the models diffusers needs
            DiffusionPipeline.from_pretrained(folders["vqvae"])
            sys.exit("loaded after a bare import latentcode")
        except ValueError as error:
            assert "import latentcode.modeling" in str(error), error
        import latentcode.modeling
        for family, folder in folders.items():
            pipeline = DiffusionPipeline.from_pretrained(folder)
            images = pipeline(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3,
                              output_type="np").images
            np.save({str(tmp_path)!r} + f"/{{family}}.npy", images)
        """
    )
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for family, (_, images) in saved_pipelines.items():
        assert np.array_equal(np.load(tmp_path / f"{family}.npy"), images)


def test_diffusion_loss_is_epsilon_prediction_mse():
    """Against the objective written out: noise and timesteps drawn from the same generator."""
    from diffusers import DDPMScheduler

    model = tiny_model("vae")
    torch.manual_seed(0)
    unet = latent_unet(model.config, block_out_channels=(16, 32), norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=100)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = diffusion_loss(unet, scheduler, latents, torch.Generator().manual_seed(2))

    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 100, (3,), generator=generator)
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(3, 1, 1, 1)
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    with torch.no_grad():
        expected = ((unet(noisy, timesteps).sample - noise) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)


@pytest.mark.single_thread
def test_train_latent_diffusion_script(tmp_path, fresh_accelerate_state):
    """training/train_latent_diffusion.py on streamed real digits, with our VAE: the saved
    pipeline loads with DiffusionPipeline and generates images of the autoencoder's size."""
    vae_dir, output_dir = tmp_path / "vae", tmp_path / "ldm"
    tiny_model("vae", in_channels=1).save_pretrained(vae_dir)
    argv = [
        "--pretrained_model_name_or_path", str(vae_dir), "--output_dir", str(output_dir),
        "--dataset_name", "builtin:digits", "--max_train_steps", "4", "--train_batch_size", "8",
        "--validation_steps", "0", "--num_validation_images", "16", "--num_samples", "4",
        "--num_inference_steps", "2", "--block_out_channels", "[16, 32]", "--norm_num_groups", "8",
        "--lr_warmup_steps", "1",
    ]  # fmt: skip
    # In this process, through the script's command line and `main` (the second-stage kill test
    # runs the script as a program): no second interpreter start for the same code.
    script = load_script("training/train_latent_diffusion.py")
    script.main(script.parse_args(argv))

    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["details"]["global_step"] == 4 and math.isfinite(metrics["metrics"]["validation_loss"])
    pipeline = DiffusionPipeline.from_pretrained(output_dir)
    # The scaling factor measured on the first batch is stored in the autoencoder's config.
    assert pipeline.vqvae.config.scaling_factor == pytest.approx(metrics["details"]["scaling_factor"])
    assert metrics["details"]["scaling_factor"] != 1.0
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 1)
    assert PIL.Image.open(output_dir / "samples.png").size == (2 * (16 + 4),) * 2


@pytest.mark.single_thread
def test_train_latent_diffusion_takes_a_config_file_checkpoints_and_resumes_exactly(tmp_path):
    """The latent-diffusion script shares train.py's machinery: --config YAML, checkpoints, exact
    resume (the noise generator and the measured scaling factor come back with the checkpoint)."""
    import importlib.util
    import shutil
    import sys

    import yaml
    from safetensors.torch import load_file

    from latentcode.training.config import load_config

    spec = importlib.util.spec_from_file_location("train_latent_diffusion", REPO / "training/train_latent_diffusion.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up
    spec.loader.exec_module(script)
    vae_dir = tmp_path / "vae"
    tiny_model("vae", in_channels=1).save_pretrained(vae_dir)
    options = dict(
        pretrained_model_name_or_path=str(vae_dir), dataset_name="builtin:digits", max_train_steps=4,
        train_batch_size=4, num_validation_images=4, num_samples=2, num_inference_steps=2,
        block_out_channels=[16, 32], norm_num_groups=8, lr_warmup_steps=1, validation_steps=0,
        checkpointing_steps=2, report_to="none",
    )  # fmt: skip
    nested = load_config(None, script.LatentDiffusionConfig, **options).to_dict()  # the YAML's form: by group
    (tmp_path / "ldm.yaml").write_text(yaml.safe_dump(nested))

    def run(output_dir, *flags):
        reset_accelerate_state()
        return script.main(
            script.parse_args(["--config", str(tmp_path / "ldm.yaml"), "--output_dir", str(output_dir), *flags])
        )

    first = run(tmp_path / "uninterrupted")
    shutil.copytree(tmp_path / "uninterrupted" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run(tmp_path / "resumed", "--resume_from_checkpoint", "latest")
    assert resumed["details"]["scaling_factor"] == first["details"]["scaling_factor"] != 1.0
    expected = load_file(tmp_path / "uninterrupted" / "unet" / "diffusion_pytorch_model.safetensors")
    actual = load_file(tmp_path / "resumed" / "unet" / "diffusion_pytorch_model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    # The saved pipeline does not clip its unit-variance latents to [-1, 1] (issue 33, item 7).
    scheduler_config = json.loads((tmp_path / "uninterrupted" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["_class_name"] == "DDIMScheduler" and scheduler_config["clip_sample"] is False


def tiny_stable_diffusion(vae, folder: Path) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline of tiny random components made here (no Hub): a CLIP text model
    with a CLIP tokenizer over the letters, a cross-attention UNet and `vae`."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter], vocab[letter + "</w>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    text_config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=2,
    )  # fmt: skip
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config).eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def text_to_image(pipeline) -> np.ndarray:
    """`[2, 16, 16, 3]` images in [0, 1] for two prompts, 2 DDIM steps with classifier-free guidance."""
    return pipeline(
        ["a red cat", "a boat"], height=16, width=16, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images  # fmt: skip


def test_stable_diffusion_with_our_vae_gives_the_images_of_autoencoder_kl(tmp_path):
    """StableDiffusionPipeline calls `vae.decode(latents, return_dict=False, generator=...)`:
    ours gives the images of the equivalent AutoencoderKL, saves, and loads back exactly."""
    ours = tiny_stable_diffusion(tiny_model("vae", scaling_factor=0.5), tmp_path / "tokenizer")
    native = StableDiffusionPipeline(**{**ours.components, "vae": ours.vae.to_diffusers().eval()})
    native.set_progress_bar_config(disable=True)
    images = text_to_image(ours)
    assert images.shape == (2, 16, 16, 3) and images.std() > 0.01
    np.testing.assert_allclose(images, text_to_image(native), atol=1e-5)

    ours.save_pretrained(tmp_path / "sd")
    model_index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    assert model_index["vae"] == ["latentcode.modeling.vae", "VAEModel"]
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vae) is latentcode.VAEModel
    assert np.array_equal(text_to_image(loaded), images)


def test_our_vae_replaces_the_vae_of_a_saved_diffusers_pipeline(tmp_path):
    """`from_pretrained(path, vae=ours)` on a pipeline saved with diffusers' AutoencoderKL: diffusers
    accepts ours as a ModelMixin, records its class when saving, and loads it back."""
    vae = tiny_model("vae", scaling_factor=0.5)
    reference = tiny_stable_diffusion(vae, tmp_path / "tokenizer")
    native = StableDiffusionPipeline(**{**reference.components, "vae": vae.to_diffusers().eval()})
    native.save_pretrained(tmp_path / "native")
    assert json.loads((tmp_path / "native" / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]

    swapped = StableDiffusionPipeline.from_pretrained(tmp_path / "native", vae=vae)
    swapped.set_progress_bar_config(disable=True)
    assert swapped.vae is vae
    images = text_to_image(swapped)
    np.testing.assert_allclose(images, text_to_image(reference), atol=1e-6)
    swapped.save_pretrained(tmp_path / "swapped")
    assert json.loads((tmp_path / "swapped" / "model_index.json").read_text())["vae"] == [
        "latentcode.modeling.vae",
        "VAEModel",
    ]
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "swapped")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vae) is latentcode.VAEModel and np.array_equal(text_to_image(loaded), images)


def test_a_quantizer_diffusers_lacks_replaces_the_vqvae_of_a_saved_ldm_pipeline(tmp_path):
    """An FSQ tokenizer, which has no diffusers equivalent (`to_diffusers` cannot export it), as
    the `vqvae` of an LDMPipeline saved with diffusers' VQModel."""
    native = tiny_pipeline("vqvae")
    native = LDMPipeline(vqvae=native.vqvae.to_diffusers().eval(), unet=native.unet, scheduler=native.scheduler)
    native.save_pretrained(tmp_path / "native")
    fsq = tiny_model("vqvae", quantizer="fsq", quantizer_config={"levels": [5, 4, 3, 3]})
    pipeline = LDMPipeline.from_pretrained(tmp_path / "native", vqvae=fsq)
    pipeline.set_progress_bar_config(disable=True)
    images = generate(pipeline)
    assert images.shape == (2, 16, 16, 3) and images.std() > 0.01
    direct = LDMPipeline(vqvae=fsq, unet=native.unet, scheduler=native.scheduler)
    direct.set_progress_bar_config(disable=True)
    assert np.array_equal(generate(direct), images)
    pipeline.save_pretrained(tmp_path / "fsq")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "fsq")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.vqvae.config.quantizer == "fsq" and np.array_equal(generate(loaded), images)
