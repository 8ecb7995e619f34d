"""Reading tensor files a user hands over (encoder weights, ``state.pt``): safetensors, or
torch files read with ``weights_only=True``, which refuses pickled code. One short reason on
failure: torch's own message runs to a paragraph of advice about trusting the file."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

from nerveseg_cli.errors import NervesegError, brief


def load_tensor_file(path: Path, what: str) -> Any:
    """The contents of a .safetensors file, or of a torch file of tensors and plain
    containers; anything else is an error ``{path}: not {what} (...)``."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():  # torch warns about old pickle protocols, too
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "it holds Python objects other than tensors, which are never unpickled"
    except (EOFError, RuntimeError, ValueError, OSError) as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            reason = "it holds Python objects other than tensors, which are never unpickled"
        else:
            reason = brief(exc, 80)
    except Exception as exc:  # noqa: BLE001  any unreadable file is the user's input problem
        reason = brief(exc, 80)
    raise NervesegError(f"{path}: not {what} ({reason})")
