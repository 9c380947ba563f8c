"""Our models where users and other libraries put them: multi-threaded inference mode, diffusers'
call signatures, meta-device construction, transformers' loading and config conventions."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, VQModel
from helpers import QUANTIZER_OVERRIDES, tiny_config, tiny_model
from transformers import AutoConfig

import latentcode
from latentcode import AutoencoderConfig, VAEConfig, VQVAEConfig, VQVAEModel
from latentcode.families import FAMILIES
from latentcode.modules.quantizers import QUANTIZERS


def pixels(batch: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- multi-threaded inference ------------------------------------------------------------------


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("quantizer", sorted(QUANTIZER_OVERRIDES))
def test_inference_mode_with_two_threads_equals_one_thread(quantizer, threads):
    """Under torch.inference_mode with 2 threads and more latent vectors than one search block
    (6 * 8 * 8 = 384 > 256 rows), encode / decode / forward give the one-thread results."""
    assert set(QUANTIZER_OVERRIDES) == set(QUANTIZERS)  # every quantizer is covered
    model = tiny_model("vqvae", **QUANTIZER_OVERRIDES[quantizer])
    x = pixels()
    with torch.inference_mode():
        encoded = model.encode(x)
        decoded = model.decode(encoded.latents).sample
        forward = model(x).sample
    torch.set_num_threads(1)
    with torch.no_grad():
        reference = model.encode(x)
        assert torch.equal(encoded.indices, reference.indices)
        torch.testing.assert_close(decoded, model.decode(reference.latents).sample)
        torch.testing.assert_close(forward, model(x).sample)
    assert encoded.indices.unique().numel() > 1


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_search_threads_run_under_the_callers_grad_mode(threads):
    """The search's worker threads follow the caller: inside inference mode their output is an
    inference tensor; outside it, an ordinary one that autograd code may use."""
    vectors, codebook = torch.randn(1000, 8), torch.randn(300, 8)
    expected = torch.cdist(vectors, codebook).argmin(dim=1)
    from latentcode.modules.quantizers.search import nearest_codebook_indices

    with torch.inference_mode():
        inside = nearest_codebook_indices(vectors, codebook, max_block_elements=64 * 64)
    outside = nearest_codebook_indices(vectors, codebook, max_block_elements=64 * 64)
    assert inside.is_inference() and not outside.is_inference()
    assert torch.equal(inside, expected) and torch.equal(outside, expected)


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_worker_threads_belong_to_a_pool_that_closes_them(threads):
    """The search's threads are `SHARED_POOL`'s: `close()` stops them, the next search starts them
    again; a pool of one's own stops its threads at the end of a `with` block."""
    import threading

    from latentcode.modules import workers
    from latentcode.modules.quantizers.search import nearest_codebook_indices

    def worker_threads() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name.startswith("latentcode-worker")]

    vectors, codebook = torch.randn(1000, 8), torch.randn(300, 8)
    expected = nearest_codebook_indices(vectors, codebook, max_block_elements=64 * 64)
    assert worker_threads()
    workers.SHARED_POOL.close()
    assert not worker_threads()
    assert torch.equal(nearest_codebook_indices(vectors, codebook, max_block_elements=64 * 64), expected)
    assert worker_threads()
    workers.SHARED_POOL.close()
    done = []
    with workers.WorkerPool() as pool:
        pool.run(done.append, range(4), workers=2)
        assert len(worker_threads()) == 2
    assert sorted(done) == [0, 1, 2, 3] and not worker_threads()


# -- diffusers' signatures ---------------------------------------------------------------------


def parameters(function) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()][2:]


@pytest.mark.single_thread
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (latentcode.VAEModel.decode, AutoencoderKL.decode),
        (latentcode.AutoencoderModel.decode, AutoencoderKL.decode),
        (latentcode.VQVAEModel.decode, VQModel.decode),
        (latentcode.VAEModel.forward, AutoencoderKL.forward),
        (latentcode.VAEModel.encode, AutoencoderKL.encode),
        (latentcode.VQVAEModel.encode, VQModel.encode),
    ],
)
def test_positional_arguments_after_the_input_are_diffusers(ours, theirs):
    """Same names in the same positions after the input, so a pipeline's positional or keyword
    call means the same thing (`return_dict` defaults to `config.return_dict`, i.e. True); what
    ours adds (transformers' `output_hidden_states`) is keyword-only."""
    positional = [p.name for p in list(inspect.signature(ours).parameters.values())[2:] if p.kind != p.KEYWORD_ONLY]
    assert positional == [name for name, _ in parameters(theirs)]


def test_decode_accepts_the_arguments_pipelines_pass(family):
    model = tiny_model(family)
    code = torch.randn(2, model.config.codebook_dim if family == "vqvae" else 4, 8, 8)
    generator = torch.Generator().manual_seed(0)
    kwargs = {} if family == "vqvae" else {"generator": generator}
    (sample,) = model.decode(code, return_dict=False, **kwargs)
    torch.testing.assert_close(sample, model.decode(code).sample)


def test_vq_decode_looks_indices_up_with_shape_as_diffusers_vqmodel():
    """aMUSEd calls `vqvae.decode(indices, force_not_quantize=True, shape=(B, h, w, D))` with
    indices `[B, h*w]`; VQModel looks them up in its codebook."""
    model = tiny_model("vqvae", codebook_size=64)
    indices = torch.randint(0, 64, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    sample = model.decode(indices.reshape(2, 64), force_not_quantize=True, shape=(2, 8, 8, 4)).sample
    torch.testing.assert_close(sample, model.decode_indices(indices).sample)
    native = model.to_diffusers()
    native.config.lookup_from_codebook = True  # VQModel's own switch for this call
    expected = native.decode(indices.reshape(2, 64), force_not_quantize=True, shape=(2, 8, 8, 4)).sample
    torch.testing.assert_close(sample, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="force_not_quantize=True"):
        model.decode(indices, shape=(2, 8, 8, 4))
    with pytest.raises(ValueError, match=r"shape \(B, h, w, codebook_dim=4\)"):
        model.decode(indices, force_not_quantize=True, shape=(2, 8, 8, 3))
    with pytest.raises(ValueError, match="expected 128 token indices"):
        model.decode(indices[:1], force_not_quantize=True, shape=(2, 8, 8, 4))


# -- config.return_dict --------------------------------------------------------------------------


def test_config_return_dict_false_gives_tuples_everywhere(family):
    model = tiny_model(family, return_dict=False)
    x = pixels(2)
    reference = tiny_model(family)
    forward, expected = model(x), reference(x)
    assert isinstance(forward, tuple)
    assert len(forward) == len(expected.to_tuple())
    for got, want in zip(forward, expected.to_tuple()):
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want)
    encoded = model.encode(x)
    assert isinstance(encoded, tuple)
    code = encoded[0].mode() if family == "vae" else encoded[0]
    decoded = model.decode(code)
    assert isinstance(decoded, tuple)
    torch.testing.assert_close(decoded[0], reference.decode(code).sample)
    # An explicit argument wins over the config, either way.
    assert model.decode(code, return_dict=True).sample is not None
    assert isinstance(reference.decode(code, return_dict=False), tuple)
    if family == "vqvae":
        assert isinstance(model.decode_indices(encoded[2]), tuple)


# -- meta-device construction ------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_default_vqvae_builds_under_init_empty_weights(quantizer):
    """accelerate's init_empty_weights (big-model loading, diffusers' loader) puts parameters on
    the meta device: every quantizer must build there, at its default sizes."""
    config = VQVAEConfig(quantizer=quantizer)
    with init_empty_weights():
        model = VQVAEModel(config)
    assert all(p.is_meta for p in model.parameters())
    with torch.device("meta"):
        model = VQVAEModel(config)
    assert all(t.is_meta for t in (*model.parameters(), *model.buffers()))


def test_every_family_builds_under_init_empty_weights(family):
    with init_empty_weights():
        model = FAMILIES[family].model_class(tiny_config(family))
    assert all(p.is_meta for p in model.parameters())


# -- config typos --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config_class, key, closest",
    [
        (latentcode.VQVAEConfig, "codebook_sise", "codebook_size"),
        (latentcode.VAEConfig, "kl_wieght", "kl_weight"),
        (latentcode.AutoencoderConfig, "block_out_channel", "block_out_channels"),
    ],
)
def test_misspelt_config_fields_are_errors_naming_the_closest_field(config_class, key, closest, tmp_path):
    message = f"{config_class.__name__} has no field '{key}'; did you mean '{closest}'"
    with pytest.raises(ValueError, match=message):
        config_class(**{key: 256})
    config_class().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, key: 256}))
    with pytest.raises(ValueError, match=message):
        config_class.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_pretrained(tmp_path)


def test_transformers_generic_config_keys_still_work(tmp_path):
    """The keys every PretrainedConfig takes (transformers' `config_common_kwargs` of its
    ConfigTester) are accepted, kept, and survive a save / load."""
    common = {
        "return_dict": False,
        "output_hidden_states": True,
        "output_attentions": True,
        "dtype": "float16",
        "chunk_size_feed_forward": 5,
        "architectures": ["VQVAEModel"],
        "id2label": {0: "label"},
        "label2id": {"label": "0"},
        "problem_type": "regression",
    }
    config = VQVAEConfig(codebook_size=64, **common)
    config.save_pretrained(tmp_path)
    loaded = VQVAEConfig.from_pretrained(tmp_path, name_or_path="somewhere", attn_implementation="eager")
    for current in (config, loaded):
        assert current.dtype == torch.float16 and current.output_attentions
        assert current.codebook_size == 64
        for key, value in common.items():
            if key not in ("dtype", "output_attentions"):
                assert getattr(current, key) == value, key
    assert VQVAEConfig(num_labels=3).num_labels == 3
    assert VQVAEConfig(tie_word_embeddings=False).tie_word_embeddings is False
    assert VQVAEConfig(torch_dtype="bfloat16").dtype == torch.bfloat16


# -- transformers 5 conventions ------------------------------------------------------------------


def test_output_hidden_states_are_the_encoders_feature_maps(family):
    """`output_hidden_states=True` (or `config.output_hidden_states`, as in transformers' models)
    returns the encoder's feature maps, equal to what its modules output (captured by hooks,
    also under inference mode, whose in-place ops must not touch them), for sliced batches
    too; tiled encoding, which never holds a whole image's maps, refuses with the way out."""
    model = tiny_model(family).eval()
    encoder = model.encoder
    captured = []
    for module in (encoder.conv_in, *encoder.down, encoder.mid):
        module.register_forward_hook(lambda module, args, output: captured.append(output.clone()))
    x = pixels(3)
    with torch.inference_mode():
        hidden_states = model(x, output_hidden_states=True).hidden_states
    channels = model.config.block_out_channels
    expected_shapes = [(3, channels[0], 16, 16)] + [
        (3, c, 16 >> min(level + 1, len(channels) - 1), 16 >> min(level + 1, len(channels) - 1))
        for level, c in enumerate(channels)
    ]
    assert [tuple(h.shape) for h in hidden_states] == expected_shapes + [expected_shapes[-1]]
    for ours, hooked in zip(hidden_states, captured, strict=True):
        assert torch.equal(ours, hooked)

    assert model(x).hidden_states is None
    model.config.output_hidden_states = True
    output = model(x)
    assert output.to_tuple()[-1] is not None and len(output.hidden_states) == len(hidden_states)
    model.enable_slicing(2)
    for sliced, whole in zip(model(x).hidden_states, hidden_states, strict=True):
        torch.testing.assert_close(sliced, whole)
    model.disable_slicing()
    model.enable_tiling()
    with pytest.raises(ValueError, match=r"tiled encoding .* model\.disable_tiling\(\)"):
        model(pixels(1, size=32))


def test_vae_forward_is_torch_exportable():
    """The forward output holds tensors only (the posterior's mean and log-variance, not the
    distribution object), so torch.export traces it; the exported program gives the same output."""
    model = tiny_model("vae")
    x = pixels(2)
    exported = torch.export.export(model, (x,)).module()
    output, expected = exported(x), model(x)
    for name in ("sample", "latents", "latent_mean", "latent_logvar", "loss", "kl"):
        torch.testing.assert_close(output[name], expected[name], msg=name)
    torch.testing.assert_close(expected.latents, model.encode(x).latent_dist.mode())


# -- from_pretrained on a missing path -------------------------------------------------------------


@pytest.fixture
def no_download(monkeypatch):
    """Make any attempt of transformers to fetch files fail loudly: the error must come first."""

    def fail(*args, **kwargs):
        raise AssertionError("from_pretrained went on to look for files")

    monkeypatch.setattr("transformers.utils.hub.cached_files", fail)


@pytest.mark.parametrize("path", ["./my-vqvae", "models/run/final", "/no/such/folder"])
def test_a_missing_folder_that_cannot_be_a_repo_id_is_named_at_once(path, no_download, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=f"no folder '{path}' here .*not a Hub repo id"):
        VQVAEModel.from_pretrained(path)


@pytest.mark.parametrize("config_class", [AutoencoderConfig, VAEConfig, VQVAEConfig])
def test_a_config_from_a_missing_folder_is_named_at_once(config_class, no_download, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="no folder './my-vqvae' here .*not a Hub repo id"):
        config_class.from_pretrained("./my-vqvae")
    config_class(block_out_channels=(8,), norm_num_groups=4).save_pretrained("saved")
    monkeypatch.undo()  # the saved folder loads through transformers' own file lookup
    assert config_class.from_pretrained(tmp_path / "saved").block_out_channels == [8]


def test_a_repo_id_without_hub_access_is_named_at_once(no_download, monkeypatch):
    """A name that could be a repo id, not in the cache, and the Hub out of reach (offline mode, or
    no network): the error names the path and says why the Hub was not searched."""
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="no folder 'my-vqvae' here .*no Hub access to look for a repo 'my-vqvae' "):
        VQVAEModel.from_pretrained("my-vqvae")
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", False)
    with pytest.raises(OSError, match=r"local_files_only=True"):
        VQVAEModel.from_pretrained("org/my-vqvae", local_files_only=True)

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr("latentcode.hub.model_info", unreachable)
    with pytest.raises(OSError, match="no Hub access to look for a repo 'org/my-vqvae': .*Name or service"):
        VQVAEModel.from_pretrained("org/my-vqvae")


def test_an_existing_folder_or_cached_repo_id_loads(tmp_path, monkeypatch):
    model = tiny_model("vqvae")
    model.save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert torch.equal(VQVAEModel.from_pretrained("model").quantizer.codebook, model.quantizer.codebook)
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--cached"
    model.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", True)
    loaded = VQVAEModel.from_pretrained("org/cached", cache_dir=tmp_path / "hub", local_files_only=True)
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)


def test_models_are_diffusers_model_mixins_with_their_gradient_checkpointing_api(family):
    """diffusers checks components with `issubclass(..., ModelMixin)`; its own switch for
    activation checkpointing reaches the same layers as transformers'."""
    from diffusers import ModelMixin
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = tiny_model(family)
    assert isinstance(model, ModelMixin) and not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(layer.gradient_checkpointing for layer in layers) and model.is_gradient_checkpointing
    model.disable_gradient_checkpointing()
    assert not any(layer.gradient_checkpointing for layer in layers)
