"""Reading checkpoint files safely and loading state dicts exactly.

Two rules hold for every conversion in this package:

- A checkpoint file is never fully unpickled. `.safetensors` files hold only tensors;
  `.ckpt` / `.pt` / `.bin` files are read with `torch.load(weights_only=True)`, whose
  unpickler builds tensors and plain containers and refuses everything else. PyTorch
  Lightning checkpoints (taming-transformers, latent-diffusion) also pickle some of the
  trainer's bookkeeping objects (the `ModelCheckpoint` callback class as a dict key, an
  `omegaconf` config); those few names stand for inert placeholders, so they are never
  imported and nothing of theirs runs.
- A state dict is loaded only when it fits the model exactly: every missing, unexpected or
  mis-shaped key, and every tensor holding NaN or inf, is named in the error and the conversion
  stops. Zip-format torch files have their CRCs checked first (`torch.load` does not).
"""

from __future__ import annotations

import logging
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import InputError

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)

# Modules whose objects Lightning checkpoints carry outside the weights. Their names are
# replaced by an inert placeholder class during weights_only loading; any other unknown name
# (os.system, builtins.eval, ...) still stops the load.
TRAINER_BOOKKEEPING_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")


class CheckpointError(InputError, ValueError):
    """A checkpoint file that cannot be read, or whose contents do not fit the model (an input
    error: the conversion scripts print its message without a traceback)."""


class _Placeholder:
    """Stands for a trainer object in a checkpoint: accepts any arguments and state, keeps none."""

    def __new__(cls, *args, **kwargs):  # pickle's NEWOBJ passes the original constructor's args
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _bookkeeping_globals(path: str) -> list[tuple[type, str]]:
    """Placeholders for the trainer globals the pickle in `path` references."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: weights_only loading reports the problem itself
        return []
    return [(_Placeholder, name) for name in names if name.startswith(TRAINER_BOOKKEEPING_MODULES)]


def read_checkpoint(path: str | os.PathLike) -> Mapping:
    """Read a `.safetensors` or torch-pickle checkpoint without executing any code from it.

    Returns the stored object: a `{name: tensor}` dict, or for Lightning `.ckpt` files the
    dict holding `"state_dict"`. Raises [`CheckpointError`] naming the file and the reason when
    the file is missing, truncated, corrupt, or references code.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    if path.endswith(SAFETENSORS_SUFFIXES):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"could not read safetensors file {path!r}: corrupt or truncated ({error})") from None
    _verify_zip(path)
    try:
        with torch.serialization.safe_globals(_bookkeeping_globals(path)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickler_reason(error)
        if "GLOBAL" not in reason and (names := _pickled_globals(path)):
            reason = f"it names {', '.join(names)}"
        if "GLOBAL" in reason or reason.startswith("it names"):
            raise CheckpointError(
                f"refused to load {path!r}: its pickle references Python code, so it may try to execute code "
                f"({reason}). Only tensors, plain containers and trainer bookkeeping "
                f"({', '.join(TRAINER_BOOKKEEPING_MODULES)}) are accepted."
            ) from None
        raise CheckpointError(f"could not read checkpoint {path!r}: corrupt or truncated ({reason})") from None
    except Exception as error:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        raise CheckpointError(
            f"could not read checkpoint {path!r}: corrupt or truncated torch file ({type(error).__name__}: {error})"
        ) from None


def _verify_zip(path: str) -> None:
    """Check the CRC of every member of a zip-format torch file (`torch.load` does not: a flipped
    byte in a tensor would load as a silently wrong weight). Legacy non-zip files pass through."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(
            f"could not read checkpoint {path!r}: corrupt or truncated zip archive ({error})"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"could not read checkpoint {path!r}: corrupt or truncated (member {bad!r} fails its CRC check)"
        )


def _pickled_globals(path: str) -> list[str]:
    """Names of the non-torch Python objects a plain (non-zip) pickle file refers to, read from
    its opcodes without executing them; empty when the file is not a complete pickle."""
    names, strings = [], []
    try:
        with open(path, "rb") as file:
            for opcode, argument, _ in pickletools.genops(file):
                if opcode.name == "GLOBAL":
                    names.append(argument.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(argument, str):
                    strings.append(argument)
    except Exception:  # not a pickle, or a truncated one
        return []
    # Tensor rebuilding is what a weights file is made of; the rest is what refusal is about.
    return sorted({name for name in names if not name.startswith(("torch.", "collections.OrderedDict"))})


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The one informative line of torch's weights-only error (it wraps it in a long explanation)."""
    message = str(error)
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(message.split())


def _describe(keys: set[str]) -> str:
    return ", ".join(sorted(keys)) if keys else "none"


def load_state_dict_exactly(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `state_dict` into `model` only if its keys and shapes match the model's exactly.

    Raises [`CheckpointError`] listing every missing, unexpected and mis-shaped key by name;
    the model must then be discarded (conversion builds it fresh, so it never escapes). A key
    counts as present when the module derives it on load from the others (the VQ quantizer's
    EMA statistics from its codebook). Values keep their bits; a tensor is cast only when the
    model's dtype differs.
    """
    nonfinite = {
        key
        for key, value in state_dict.items()
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()
    }
    if nonfinite:
        raise CheckpointError(
            f"the weights from {source} hold NaN or inf values in {_describe(nonfinite)}; conversion stopped "
            "(the source model is broken, e.g. saved from a diverged run)"
        )
    expected = model.state_dict()
    unexpected = set(state_dict) - set(expected)
    mismatched = {
        f"{key} (checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)})"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    }
    if mismatched:  # torch refuses to load these at all, so report the plain key difference
        missing = set(expected) - set(state_dict)
    else:
        missing = set(model.load_state_dict(dict(state_dict), strict=False).missing_keys)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"the weights from {source} do not fit {type(model).__name__}; conversion stopped.\n"
            f"  missing keys ({len(missing)}): {_describe(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_describe(unexpected)}\n"
            f"  shape mismatches ({len(mismatched)}): {_describe(mismatched)}"
        )


def load_export(exported: nn.Module, state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> nn.Module:
    """`exported` (the diffusers model built for our `model`) with `state_dict` loaded exactly, on
    `model`'s device and dtype, in eval mode."""
    reference = next(model.parameters())
    exported.to(reference.device)
    if reference.dtype != torch.float32:
        exported.to(reference.dtype)
    load_state_dict_exactly(exported, state_dict, f"a {type(model).__name__}")
    return exported.eval()
