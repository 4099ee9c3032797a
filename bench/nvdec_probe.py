"""How far NVDEC reader threads go in one process, and how long they hold the GIL.

``python -m bench.nvdec_probe CLIP THREADS SECONDS`` (a CUDA GPU, torch and PyNvVideoCodec):
THREADS threads run the NVDEC reader's decode loop flat out on CLIP (``CreateDemuxer``,
``CreateDecoder`` with RGB output, a copy of each frame on the thread's stream, a
synchronize), looping it; meanwhile the main thread sleeps 1 ms at a time and records how
late it wakes, which is how long the others held the GIL. Prints the aggregate decode rate
and the lateness.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np


def main(clip: str, threads: int, seconds: float) -> None:
    """Run the probe and print one line."""
    import PyNvVideoCodec as nvc
    import torch

    stop = threading.Event()
    decoded = [0] * threads

    def decode(index: int) -> None:
        torch.cuda.set_device(0)
        stream = torch.cuda.Stream()
        while not stop.is_set():
            demuxer = nvc.CreateDemuxer(clip)
            decoder = nvc.CreateDecoder(
                gpuid=0, codec=demuxer.GetNvCodecId(), cudacontext=0,
                cudastream=stream.cuda_stream, usedevicememory=True,
                outputColorType=nvc.OutputColorType.RGB,
            )  # fmt: skip
            for packet in demuxer:
                if stop.is_set():
                    return
                frame: Any
                for frame in decoder.Decode(packet):
                    with torch.cuda.stream(stream):
                        image = torch.from_dlpack(frame)
                        torch.empty_like(image).copy_(image)
                    stream.synchronize()
                    decoded[index] += 1

    workers = [threading.Thread(target=decode, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(2.0)  # decoders created and running
    start_count = sum(decoded)
    late = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        asleep = time.perf_counter()
        time.sleep(0.001)
        late.append(time.perf_counter() - asleep - 0.001)
    rate = (sum(decoded) - start_count) / seconds
    stop.set()
    ms = np.array(late) * 1000
    print(
        f"threads={threads}: {rate:.0f} fps decoded; main thread woke late by "
        f"{ms.mean():.2f} ms on average, p99 {np.percentile(ms, 99):.2f}, max {ms.max():.1f}"
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
