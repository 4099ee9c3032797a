"""``mean_luma`` of letterboxed frames still on a torch device (a batch of NVDEC frames): the
same strided subsample and weights, computed where the pixels are, so only one number per
frame crosses to the host."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from daemon.monitor.brightness import _LUMA_BGR, _LUMA_STRIDE


def mean_lumas(contents: Sequence[torch.Tensor]) -> list[float]:
    """``mean_luma`` of each RGB ``HxWx3`` uint8 tensor (all on one device), with one
    device-to-host transfer for all of them."""
    weights = torch.from_numpy(_LUMA_BGR[::-1].copy()).to(contents[0].device)
    means = torch.stack(
        [c[::_LUMA_STRIDE, ::_LUMA_STRIDE].reshape(-1, 3).float().mean(dim=0) for c in contents]
    )
    lumas: list[float] = (means @ weights).tolist()
    return lumas
