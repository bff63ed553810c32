"""What the machine can do, measured in the benchmark's own process, so that a benchmark reports
efficiency (its figures over these) beside its absolute figures.

- `matmul_peak`: dense matmul throughput (GFLOP/s) for the workload's own shapes, in float32 and
  bfloat16; the peak is the highest of several rounds over all shapes;
- `memory_bandwidth`: GB/s of a large copy (bytes read + bytes written);
- `bf16_native`: the CPU's bfloat16 instructions (`amx_bf16`, `avx512_bf16` in /proc/cpuinfo), or
  the GPU's name and bfloat16 support, and the measured bfloat16 / float32 peak ratio (above ~1.5
  only where bfloat16 is native).

Everything runs on a `device` (the CPU by default; a CUDA GPU is synchronised around each timing).

Peaks on a shared VM move from minute to minute (AMX units warm up, neighbours come and go: the
bfloat16 peak of one matmul read anywhere from 700 to 2100 GFLOP/s on one machine), so a benchmark
measures with a `PeakTracker` before and after its workload, several rounds each, keeps the highest
and reports the spread.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

Shape = tuple[int, int, int]  # (m, k, n): [m, k] @ [k, n]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously; a CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_device(parser: argparse.ArgumentParser, value: str) -> torch.device:
    """`--device` of a benchmark: the CPU or a CUDA GPU torch can use, else the parser's error."""
    device = torch.device(value)
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {value}: only cpu and cuda are measured")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {value}: torch sees no CUDA device here")
    return device


def device_name(device: torch.device) -> str | None:
    """The GPU's name, or None on the CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def matmul_gflops(shape: Shape, dtype: torch.dtype, seconds: float = 0.25, device: torch.device = torch.device("cpu")) -> float:
    """GFLOP/s of `torch.mm` on `shape` in `dtype` on `device`, repeated for at least `seconds` after
    a warm-up."""
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    b = torch.randn(k, n, generator=generator).to(device, dtype)
    out = torch.empty(m, n, dtype=dtype, device=device)
    for _ in range(3):
        torch.mm(a, b, out=out)
    synchronize(device)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        torch.mm(a, b, out=out)
        count += 1
        if count % 10 == 0:  # bounds what a GPU queues past the time limit
            synchronize(device)
    synchronize(device)
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def memory_bandwidth(megabytes: int = 256, seconds: float = 0.25, device: torch.device = torch.device("cpu")) -> float:
    """GB/s of copying a `megabytes` float32 tensor on `device`: bytes read plus bytes written, per second."""
    source = torch.ones(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        target.copy_(source)
        count += 1
        synchronize(device)
    return 2 * source.numel() * 4 * count / (time.perf_counter() - start) / 1e9


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


@dataclass
class PeakTracker:
    """Rounds of peak measurements for `shapes`, accumulated over a benchmark's run."""

    shapes: Sequence[Shape]
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16)
    rounds: dict[str, list[float]] = field(default_factory=dict)  # dtype name -> best GFLOP/s of each round
    per_shape: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> "m x k x n" -> best
    bandwidth: list[float] = field(default_factory=list)
    device: torch.device = torch.device("cpu")

    def measure(self, rounds: int = 3) -> None:
        """`rounds` rounds: every shape in every dtype, then the copy bandwidth."""
        for _ in range(rounds):
            for dtype in self.dtypes:
                name = str(dtype).removeprefix("torch.")
                best = 0.0
                for shape in self.shapes:
                    gflops = matmul_gflops(shape, dtype, device=self.device)
                    label = " x ".join(map(str, shape))
                    shapes = self.per_shape.setdefault(name, {})
                    shapes[label] = round(max(shapes.get(label, 0.0), gflops), 1)
                    best = max(best, gflops)
                self.rounds.setdefault(name, []).append(best)
            self.bandwidth.append(memory_bandwidth(device=self.device))

    def peak(self, dtype: torch.dtype) -> float:
        return max(self.rounds[str(dtype).removeprefix("torch.")])

    def report(self) -> dict:
        """Peak (highest round), median and lowest round per dtype, per-shape bests, bandwidth,
        and whether bfloat16 is native here."""
        peaks = {
            name: {
                "peak_gflops": round(max(values), 1),
                "median_gflops": round(statistics.median(values), 1),
                "lowest_gflops": round(min(values), 1),
                "rounds": len(values),
                "per_shape_best_gflops": self.per_shape[name],
            }
            for name, values in self.rounds.items()
        }
        ratio = None
        if {"float32", "bfloat16"} <= set(self.rounds):
            ratio = round(max(self.rounds["bfloat16"]) / max(self.rounds["float32"]), 2)
        if self.device.type == "cuda":
            bf16 = {"gpu": device_name(self.device), "native": torch.cuda.is_bf16_supported()}
        else:
            flags = sorted(cpu_flags() & {"amx_bf16", "avx512_bf16", "amx_tile", "avx512f", "avx2"})
            bf16 = {"cpu_flags": flags, "native": bool({"amx_bf16", "avx512_bf16"} & set(flags))}
        return {
            "device": str(self.device),
            "matmul": peaks,
            "memory_bandwidth_gb_s": {
                "peak": round(max(self.bandwidth), 1), "lowest": round(min(self.bandwidth), 1),
            } if self.bandwidth else None,
            "bf16": {**bf16, "measured_bf16_over_fp32": ratio},
        }
