"""How ``bench_train_step.py`` measures a step: its wall-clock split, its peak memory, and
whether the device computes bf16 natively (which decides the best configuration's precision)."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path

import torch


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and how that was decided."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(), f"CUDA {torch.cuda.get_device_name(device)}"
    checks = {"AVX512-BF16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}
    found = [name for name, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()]
    return bool(found), f"CPU {', '.join(found) or 'without AVX512-BF16 / AMX'}"


class PeakMemory:
    """Peak memory of one step above its start: CUDA allocator, or the CPU's resident set
    sampled every 2 ms by a thread (glibc's free pages returned first, so freed memory does
    not hide the next step's growth)."""

    def __init__(self, device: torch.device):
        self.device, self.page = device, os.sysconf("SC_PAGE_SIZE")
        self._trim = None
        if device.type == "cpu":
            try:  # glibc's; elsewhere freed memory may stay resident and hide some growth
                self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass

    def rss(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self.page

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        if self._trim is not None:
            self._trim(0)
        self.start = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.start
            self.total = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra, self.total = self.peak - self.start, self.peak


class Clock:
    """Wall-clock split of a step; on CUDA every boundary synchronises (the split is then
    exact, without the overlap of the device's queue)."""

    def __init__(self, device: torch.device):
        self.device, self.parts, self.last = device, {}, 0.0

    def start(self) -> None:
        self._sync()
        self.last = time.perf_counter()

    def lap(self, part: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + now - self.last
        self.last = now

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
