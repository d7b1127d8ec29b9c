"""Pretrained weights by path or URL + sha256, shared by the models that can start from them.

Weights are never fetched at test time: tests write small state dicts themselves. A URL is
downloaded once (sha256-checked, resumable) into the cache folder.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch

from ferbench.data.download import fetch, sha256sum

#: Where downloaded weights are cached (override with FERBENCH_WEIGHTS).
WEIGHTS_CACHE = Path(os.environ.get("FERBENCH_WEIGHTS", "~/.cache/ferbench/weights")).expanduser()


def layers_by_module(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Group a state dict's tensors by module prefix, keeping the file's order."""
    groups: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
    for key, tensor in state.items():
        prefix, _, name = key.rpartition(".")
        groups.setdefault(prefix, {})[name] = tensor
    return list(groups.values())


def weights_file(path_or_url: str | Path, sha256: str) -> Path:
    """A local file checked against `sha256`, or a URL fetched (and cached) by download.fetch."""
    local = Path(path_or_url).expanduser()
    if local.is_file():
        actual = sha256sum(local)
        if actual != sha256.strip().lower():
            raise ValueError(f"sha256 mismatch for {local}: expected {sha256}, got {actual}")
        return local
    url = str(path_or_url)
    return fetch(url, WEIGHTS_CACHE / Path(url.split("?")[0]).name, sha256)
