"""Hub ids: ``"org/name"`` resolved to a local snapshot of a Hugging Face Hub model repository.

:func:`resolve_model_dir` is what :func:`unclip.pipeline.serialization.load_pipeline` calls. A built-in name
(``"shapes"``) or an existing local path is handled by :func:`unclip.pipeline.options.model_dir` exactly as
before, so a local directory named like a hub id takes precedence. Any other string with one ``/`` is a hub id:
``huggingface_hub.snapshot_download`` fetches it into the Hugging Face cache (``cache_dir``, default the
library's own, ``HF_HUB_CACHE``) and the snapshot directory is read like any other: our layout, diffusers'
UnCLIP layout or Karlo's release files (the formats registered in :mod:`unclip.pipeline.formats`).

Online, only the files a loader reads are fetched (:func:`select_files`): configs, one weight format per folder,
Karlo's checkpoints and statistics (not its unused ``ViT-L-14.pt``). Offline (``HF_HUB_OFFLINE=1``), or when the
Hub cannot be reached, the cached snapshot of ``revision`` is used; a model in neither place is a one-line error
naming it. ``huggingface_hub`` is an optional dependency (``pip install "unclip[hub]"``), imported only here,
only when a hub id is resolved.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from unclip.pipeline.options import BUILTIN_MODELS, model_dir

__all__ = ["HubUnavailableError", "is_hub_id", "select_files", "snapshot_dir", "resolve_model_dir"]

CONFIG_SUFFIXES = (".json", ".txt", ".yaml", ".yml")
"""Small files every layout may need: configs, schedulers, tokenizers, shard indices, Karlo's yaml configs."""
CONFIG_PATTERNS = [f"*{suffix}" for suffix in CONFIG_SUFFIXES]
WEIGHT_PREFERENCE = (
    # our layout and transformers' (the CLIP towers): what ``from_pretrained`` reads without a variant
    ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    # diffusers' models, in the order unclip.interop.diffusers_import reads them (its _WEIGHT_NAMES)
    (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin",
    ),
)
"""Per folder and family, the first of these present is the one weight file fetched (a ``.index.json`` brings
its shards)."""
KARLO_FILES = ("prior*.ckpt", "decoder*.ckpt", "*sr*.ckpt", "ViT-L-14_stats.th")
"""Top-level files of Karlo's release that unclip.interop.karlo_import reads (its checkpoint patterns,
``unclip.interop.formats.KARLO_CHECKPOINTS``, and its stats file); its CLIP is the transformers folder ``clip/``."""
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubUnavailableError(ImportError, RuntimeError):
    """``huggingface_hub`` is not installed (a RuntimeError too, so the CLI reports it in one line)."""


def is_hub_id(path: str | Path) -> bool:
    """Whether ``path`` is read as a hub id: a string with exactly one ``/`` and two non-empty parts that is
    neither a built-in model nor an existing local path."""
    if not isinstance(path, str) or path in BUILTIN_MODELS or path.count("/") != 1:
        return False
    org, name = path.split("/")
    return bool(org) and bool(name) and not Path(path).exists()


def select_files(files: Iterable[str]) -> list[str]:
    """The files of a repository listing (posix paths) that our loaders read, in listing order.

    Every config-like file (:data:`CONFIG_SUFFIXES`); in each folder, per family of :data:`WEIGHT_PREFERENCE`,
    the first weight file present (with its shards when it is an index); Karlo's checkpoints and statistics
    (:data:`KARLO_FILES`) at the top level. Everything else (READMEs, images, other weight formats, fp16
    duplicates, Karlo's ``ViT-L-14.pt``) is left on the Hub.
    """
    files = list(files)
    folders: dict[str, set[str]] = {}
    for file in files:
        folder, name = posixpath.split(file)
        folders.setdefault(folder, set()).add(name)
    chosen: set[str] = set()
    for folder, names in folders.items():
        for family in WEIGHT_PREFERENCE:
            pick = next((name for name in family if name in names), None)
            if pick is None:
                continue
            chosen.add(posixpath.join(folder, pick))
            if pick.endswith(".index.json"):
                stem, _, ext = pick.removesuffix(".index.json").partition(".")
                shards = fnmatch.filter(names, f"{stem}-*-of-*.{ext}")
                chosen.update(posixpath.join(folder, shard) for shard in shards)
    for file in files:
        top_level = "/" not in file
        if file.endswith(CONFIG_SUFFIXES) or (top_level and any(fnmatch.fnmatch(file, p) for p in KARLO_FILES)):
            chosen.add(file)
    return [file for file in files if file in chosen]


def _import_hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:
        raise HubUnavailableError(
            'loading a hub id ("org/name") needs huggingface_hub: pip install "unclip[hub]"'
        ) from None
    return huggingface_hub


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import) or as the library read it."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _list_files(hub: ModuleType, repo_id: str, revision: str | None) -> tuple[list[str] | None, str]:
    """(the repository's files, "") or (None, why the Hub could not be asked); a missing repo/revision raises."""
    from huggingface_hub import utils as hub_utils  # the error classes, in every huggingface_hub >= 0.23

    try:
        info = hub.HfApi().model_info(repo_id, revision=revision)  # one request (a file listing retries)
        return [sibling.rfilename for sibling in info.siblings or []], ""
    except hub_utils.GatedRepoError:
        raise PermissionError(
            f"hub model {repo_id!r} is gated: accept its terms on huggingface.co and log in (`hf auth login`)"
        ) from None
    except hub_utils.RepositoryNotFoundError:
        raise FileNotFoundError(
            f"model not found: {repo_id!r} is no local directory and no model on the Hugging Face Hub "
            "(a private one needs a login: `hf auth login`)"
        ) from None
    except hub_utils.RevisionNotFoundError:
        raise FileNotFoundError(f"hub model {repo_id!r} has no revision {revision!r} on the Hugging Face Hub") from None
    except hub_utils.HFValidationError as err:
        raise ValueError(
            f"model not found: {repo_id!r} is no local directory and no valid hub id ({_first_line(err)})"
        ) from None
    except Exception as err:  # no connection, a timeout, a server error: whatever the HTTP library raises
        return None, f"the Hub is unreachable ({_first_line(err)})"


def snapshot_dir(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The local snapshot of hub model ``repo_id`` at ``revision`` (default ``"main"``), downloaded if needed.

    Args:
        repo_id: ``"org/name"``.
        revision: a branch, tag or commit hash.
        cache_dir: the Hugging Face cache to use (default ``HF_HUB_CACHE``, normally ``~/.cache/huggingface/hub``).

    Raises:
        HubUnavailableError: huggingface_hub is not installed.
        FileNotFoundError: unknown repository or revision, or (offline) not in the cache; one line naming it.
    """
    hub = _import_hub()
    from huggingface_hub import constants
    from huggingface_hub import utils as hub_utils

    what = f"hub model {repo_id!r} (revision {revision or 'main'})"
    if _offline():
        files, unreachable = None, "HF_HUB_OFFLINE=1 forbids downloading it"
    else:
        files, unreachable = _list_files(hub, repo_id, revision)
    online = files is not None
    try:
        path = hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=not online,
            # offline: the cached snapshot must hold the configs (all of them were fetched with it)
            allow_patterns=[glob.escape(f) for f in select_files(files)] if online else CONFIG_PATTERNS,
        )
    except hub_utils.HFValidationError as err:
        raise ValueError(
            f"model not found: {repo_id!r} is no local directory and no valid hub id ({_first_line(err)})"
        ) from None
    except (hub_utils.LocalEntryNotFoundError, FileNotFoundError) as err:
        cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
        if online:
            raise FileNotFoundError(f"{what} could not be downloaded into {cache}: {_first_line(err)}") from None
        if type(err).__name__ == "IncompleteSnapshotError":  # huggingface_hub >= 1.x: a partial download
            raise FileNotFoundError(
                f"{what}: the snapshot in {cache} is incomplete; download it again online"
            ) from None
        raise FileNotFoundError(f"{what} is not in the local Hugging Face cache ({cache}) and {unreachable}") from None
    except hub_utils.HfHubHTTPError as err:
        raise FileNotFoundError(f"{what} could not be downloaded: {_first_line(err)}") from None
    return Path(path)


def resolve_model_dir(path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The directory a pipeline is loaded from: a hub id's snapshot (:func:`snapshot_dir`; ``revision`` and
    ``cache_dir`` apply to hub ids only), else :func:`unclip.pipeline.options.model_dir` (a built-in name or a
    local directory)."""
    if is_hub_id(path):
        return snapshot_dir(str(path), revision=revision, cache_dir=cache_dir)
    return model_dir(path)
