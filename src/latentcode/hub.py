"""The Hugging Face Hub: where a model argument points (a local folder, the cache, or the Hub),
and the one upload of a finished folder ([`push_to_hub`]).

Every entry point (`from_pretrained`, `from_diffusers`, `latentcode-eval`, the conversion and
training scripts, `python -m latentcode.generation`) resolves its model argument through
[`resolve_pretrained`], so a misspelt folder is named at once instead of reading as a malformed
repo id or costing half a minute of retries before a connection error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import constants, model_info, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import validate_repo_id

from .errors import PretrainedNotFoundError

logger = logging.getLogger(__name__)

# Seconds to wait for the Hub before saying it cannot be reached; the download itself retries
# for about half a minute when the network is missing.
HUB_PROBE_TIMEOUT = 5.0


def resolve_pretrained(
    name_or_path: str | os.PathLike,
    *,
    subfolder: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> str:
    """What a loader should read for `name_or_path`, or an `OSError` at once saying why there is nothing.

    Returns `name_or_path` itself for a local folder or file and for a Hub repo id that the Hub
    can serve; for a repo id in the Hugging Face cache while the Hub is off limits
    (`HF_HUB_OFFLINE=1` or `local_files_only=True`), the cached snapshot folder, so that any
    loader (transformers, diffusers) reads it as a local folder. `subfolder` is where the model's
    `config.json` lies inside the repo (e.g. `"vae"` in a pipeline repo).

    Raises:
        PretrainedNotFoundError: (an `OSError`) no such folder, and `name_or_path` is not a repo
            id, or not in the cache while the Hub is off limits, or not on the Hub, or the Hub
            cannot be reached. The message names the path, the working directory and the reason.
            A command line wrapped in `latentcode.errors.command_line` prints it without a traceback.
    """
    name = os.fspath(name_or_path)
    if os.path.exists(name):
        return name
    here = f"no folder {name!r} here ({os.getcwd()})"
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise PretrainedNotFoundError(
            f"{here}, and {name!r} is not a Hub repo id (org/name) either; check the path"
        ) from None
    config_file = "config.json" if subfolder is None else f"{subfolder}/config.json"
    cached = try_to_load_from_cache(name, config_file, cache_dir=cache_dir, revision=revision)
    offline = constants.HF_HUB_OFFLINE or local_files_only
    if isinstance(cached, str):
        # The snapshot folder holding the cached files: loads offline without asking the Hub.
        snapshot = Path(cached).parent if subfolder is None else Path(cached).parents[len(Path(subfolder).parts)]
        return str(snapshot) if offline else name
    if offline:
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "local_files_only=True"
        raise PretrainedNotFoundError(
            f"{here}, and no Hub access to look for a repo {name!r} ({reason}); it is not in the Hugging Face "
            f"cache ({cache_dir or constants.HF_HUB_CACHE}) either, as {config_file}"
        )
    try:
        model_info(name, revision=revision, token=token, timeout=HUB_PROBE_TIMEOUT)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise PretrainedNotFoundError(
            f"{here}, and no repo {name!r} on the Hub (or it is private and you are not logged in)"
        ) from error
    except HfHubHTTPError:
        return name  # the Hub answered (gated repo, server error, ...): the download reports it
    except Exception as error:  # DNS, refused connection, timeout: everything but an HTTP answer
        raise PretrainedNotFoundError(f"{here}, and no Hub access to look for a repo {name!r}: {error}") from error
    return name


def check_pretrained_source(name_or_path, **options) -> None:
    """[`resolve_pretrained`] for loaders that must keep the name they were given (transformers'
    `from_pretrained` records it as `_name_or_path`): raises the same `OSError`, returns nothing.
    Arguments that are not a path or a name (e.g. `None`, a state dict) pass unchecked."""
    if isinstance(name_or_path, (str, os.PathLike)):
        resolve_pretrained(name_or_path, **options)


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    what: str,
    retry: str,
    repo_type: str = "model",
    token: str | None = None,
    ignore_patterns: list[str] | None = None,
) -> None:
    """Upload `folder` (without the files matching `ignore_patterns`) to the Hub repository
    `repo_id` of `repo_type` in one commit, creating the repository when it does not exist.

    The training scripts push a saved model, `latentcode-tokenize` a finished code dataset; `what`
    names the folder's content for the error ("the model") and `retry` says how to upload again.

    Raises:
        RuntimeError: the upload failed (network, login, Hub); the message says that the local
            folder is complete, that the Hub holds the previous version or none (a commit is all
            or nothing), and `retry`.
    """
    from huggingface_hub import HfApi  # here: the Hub client is heavy for the commands' --help

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, repo_type=repo_type, folder_path=os.fspath(folder), ignore_patterns=ignore_patterns
        )
    except Exception as error:  # network, auth and Hub errors come in many types; all mean the same here
        raise RuntimeError(
            f"{what} is saved in {os.fspath(folder)}, but uploading it to the Hub as {repo_id} failed "
            f"({type(error).__name__}: {error}). Nothing is lost: a Hub commit is all or nothing, so the Hub "
            f"holds the previous version or none; {retry}"
        ) from error
    logger.info("uploaded %s to https://huggingface.co/%s%s", folder, "datasets/" * (repo_type == "dataset"), repo_id)
