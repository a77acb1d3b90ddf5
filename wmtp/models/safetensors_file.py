"""Writing a ``.safetensors`` file that other users may read as they may read its folder.

safetensors 0.8 writes through a temporary file created with mode 0600 and renames it into
place (safetensors/safetensors#782): a checkpoint or export would be readable by its writer
alone, while the ``config.json`` beside it honours the umask. :func:`save` gives the file the
mode any new file gets (``0666`` less the umask), as before that change.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """``safetensors.torch.save_file`` of ``tensors`` to ``path``, with the umask's mode."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~umask())
    return Path(path)


def umask() -> int:
    """This process's umask, read without changing it where Linux says it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore at once, never more permissive
    os.umask(mask)
    return mask


__all__ = ["save", "umask"]
