"""Where `from_pretrained` looks: a local folder, the Hugging Face cache, or the Hub."""

from __future__ import annotations

import os

from huggingface_hub import constants, model_info, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import validate_repo_id

# Seconds to wait for the Hub before saying it cannot be reached; the download itself retries
# for about half a minute when the network is missing.
HUB_PROBE_TIMEOUT = 5.0


def check_pretrained_source(
    name_or_path,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> None:
    """Raise an `OSError` at once when `name_or_path` is neither a local folder or file, nor a
    Hub repo id that is in the Hugging Face cache or on a reachable Hub; return otherwise.

    Without this, a misspelt folder reads as a malformed repo id ("Repo id must be in the
    form ...") or costs half a minute of retries before "couldn't connect to huggingface.co".
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or os.path.exists(name_or_path):
        return
    name = os.fspath(name_or_path)
    here = f"no folder {name!r} here ({os.getcwd()})"
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise OSError(f"{here}, and {name!r} is not a Hub repo id (org/name) either") from None
    if isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision), str):
        return  # in the cache: loads offline
    if constants.HF_HUB_OFFLINE or local_files_only:
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "local_files_only=True"
        raise OSError(
            f"{here}, and no Hub access to look for a repo {name!r} ({reason}); it is not in the Hugging Face "
            f"cache ({cache_dir or constants.HF_HUB_CACHE}) either"
        )
    try:
        model_info(name, revision=revision, token=token, timeout=HUB_PROBE_TIMEOUT)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise OSError(
            f"{here}, and no repo {name!r} on the Hub (or it is private and you are not logged in)"
        ) from error
    except HfHubHTTPError:
        return  # the Hub answered (gated repo, server error, ...): the download reports it
    except Exception as error:  # DNS, refused connection, timeout: everything but an HTTP answer
        raise OSError(f"{here}, and no Hub access to look for a repo {name!r}: {error}") from error
