"""Peak extra memory of a block of code: sampled RSS on the CPU, the allocator's peak on CUDA."""

from __future__ import annotations

import threading
import time

import torch


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.extra_bytes``."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.extra_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        import psutil

        self._process = psutil.Process()
        self._start = self._peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.extra_bytes = torch.cuda.max_memory_allocated() - self._start
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.extra_bytes = self._peak - self._start
