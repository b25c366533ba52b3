"""Checkpoint folders: a local path or a hub id resolved to a folder, and the official remote-code files kept.

Official checkpoints ship their own code (``modeling_moss_vl.py`` and friends) named by ``auto_map`` entries; this
package replaces that code at load time, but a folder we write keeps the entries and copies the files, so the
official code and engines that load MOSS-VL with ``trust_remote_code`` (SGLang) read our outputs unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import CheckpointError


def resolve_folder(name_or_path: str | os.PathLike, **hub_kwargs) -> str:
    """A local checkpoint folder, or the snapshot folder of a hub id in the Hugging Face cache.

    ``hub_kwargs`` are ``huggingface_hub.snapshot_download`` options (``revision``, ``cache_dir``,
    ``local_files_only``, ``token``, ...). Offline (``HF_HUB_OFFLINE=1``) a hub id resolves only from the cache.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(
            f"checkpoint folder {name!r} does not exist (and it is not a hub id like 'org/model')"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    subfolder = hub_kwargs.pop("subfolder", None)
    hub_kwargs.pop("force_download", None)
    try:
        folder = snapshot_download(name, **hub_kwargs)
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"{name!r} is not a local folder and is not in the Hugging Face cache, and the hub cannot be reached "
            f"(offline or HF_HUB_OFFLINE=1): download it first or pass a folder ({exc})"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot fetch {name!r} from the Hugging Face hub: {exc}") from exc
    return os.path.join(folder, subfolder) if subfolder else folder


def local_folder(name_or_path: str | os.PathLike | None) -> str | None:
    """The local folder a model or processor was loaded from (a hub id through the local cache), or None."""
    if not name_or_path:
        return None
    try:
        return resolve_folder(name_or_path, local_files_only=True)
    except CheckpointError:
        return None


def remote_code_files(auto_map: dict) -> list[str]:
    """File names of the Python modules an ``auto_map`` points to (``"module.Class"`` → ``module.py``)."""
    names = set()
    for reference in auto_map.values():
        for entry in reference if isinstance(reference, list | tuple) else [reference]:
            if isinstance(entry, str) and "." in entry:
                names.add(entry.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return sorted(names)


def copy_remote_code(source: str | os.PathLike | None, target: str | os.PathLike, auto_map: dict) -> bool:
    """Copy the remote-code files of ``auto_map`` from ``source`` to ``target``; False (nothing copied) when the
    source lacks any of them, in which case the caller must not write the ``auto_map`` either."""
    if source is None:
        return False
    files = remote_code_files(auto_map)
    if not files or not all(os.path.isfile(os.path.join(source, name)) for name in files):
        return False
    for name in files:
        if os.path.abspath(os.path.join(source, name)) != os.path.abspath(os.path.join(target, name)):
            shutil.copy2(os.path.join(source, name), os.path.join(target, name))
    return True
