"""Encoder weights: a local file (``--encoder-weights PATH``) loaded into an encoder, and the
one-line error when ImageNet weights cannot be downloaded."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from nerveseg_cli.errors import NervesegError, require_file


def load_encoder_weights(encoder: nn.Module, path: Path, in_channels: int) -> None:
    """Load a local encoder state dict (.safetensors, or .pt/.pth read with weights_only).

    ``encoder.`` and ``module.`` prefixes are stripped; a first convolution saved for 3 input
    channels is summed over them for a 1-channel model (as smp does for pretrained weights).
    """
    if path.is_dir():
        require_file(path, "an encoder weights file")
    if not path.is_file():
        raise NervesegError(f"{path}: encoder weights file not found")
    from nerveseg_cli.io.tensors import load_tensor_file

    state = load_tensor_file(path, "a readable state dict")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                        dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise NervesegError(f"{path}: not a state dict")
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    own = encoder.state_dict()
    for key, value in cleaned.items():
        if key in own and value.ndim == 4 and own[key].ndim == 4 and \
                value.shape[1] != own[key].shape[1] and own[key].shape[1] == in_channels == 1:
            cleaned[key] = value.sum(dim=1, keepdim=True)
    cleaned = {k: v for k, v in cleaned.items() if not k.startswith("fc.")}  # classifier
    missing = sorted(set(own) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(own))
    wrong = sorted(k for k in set(own) & set(cleaned) if own[k].shape != cleaned[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (first: {k} "
                         f"{tuple(cleaned[k].shape)} vs {tuple(own[k].shape)})")
        raise NervesegError(f"{path}: keys do not fit the encoder: {'; '.join(parts)}")
    encoder.load_state_dict(cleaned)


def offline_weights_error(name: str, exc: BaseException) -> NervesegError:
    """The one-line error for ImageNet weights that could not be downloaded."""
    return NervesegError(
        f"could not download imagenet weights for {name} ({type(exc).__name__}; offline?): "
        "download them on a connected machine and pass --encoder-weights PATH (a "
        ".safetensors or .pth encoder state dict)")
