"""``mean_luma`` of letterboxed frames still on a torch device (a batch of NVDEC frames): the
same strided subsample and weights, computed where the pixels are, so only one number per
frame crosses to the host."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from daemon.monitor.brightness import LUMA_BGR, LUMA_STRIDE


def mean_lumas(contents: Sequence[torch.Tensor]) -> list[float]:
    """``mean_luma`` of each RGB ``HxWx3`` uint8 tensor (all on one device): the channel
    means on the device, then one transfer of ``3 n`` floats for all of them."""
    means = torch.stack(
        [c[::LUMA_STRIDE, ::LUMA_STRIDE].reshape(-1, 3).float().mean(dim=0) for c in contents]
    )
    rgb_means: npt.NDArray[np.float32] = means.cpu().numpy()
    return [float(m) for m in rgb_means[:, ::-1] @ LUMA_BGR]
