"""What a benchmark records about the machine it ran on, and how it watches a worker's memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time


def cpu_flags():
    """The CPU's vector-extension flags that decide timings (AVX2, AVX-512, bf16, AMX), sorted."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(flag for flag in line.split(":", 1)[1].split()
                  if flag.startswith(("avx", "amx")) or flag in ("fma", "f16c"))


def vector_class(flags):
    """The CPU class that a list of `cpu_flags()` names, as RESULTS compares machines: "AVX-512 + AMX",
    "AVX-512", "AVX2" or "no AVX2"."""
    flags = set(flags)
    if "avx512f" in flags:
        return "AVX-512 + AMX" if "amx_bf16" in flags else "AVX-512"
    return "AVX2" if "avx2" in flags else "no AVX2"


def describe():
    """"x86_64, 2 CPUs" and the like."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


def run_with_memory_limit(command, limit_gb, cwd=None, poll_seconds=0.2):
    """Runs `command`, killing it when its resident memory passes `limit_gb` (polled from /proc: an address-space
    limit would stop TensorFlow, which reserves far more virtual memory than it touches, long before the machine
    runs out). -> (returncode, stdout, stderr, peak resident GiB seen, killed for memory)."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, killed = 0.0, False
    status = f"/proc/{process.pid}/status"
    while process.poll() is None:
        try:
            with open(status, encoding="utf-8") as f:
                rss_kb = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError):
            rss_kb = 0
        peak = max(peak, rss_kb / 2**20)
        if peak > limit_gb:
            process.kill()
            killed = True
            break
        time.sleep(poll_seconds)
    stdout, stderr = process.communicate()
    return process.returncode, stdout, stderr, peak, killed


def measured_row(command, limit_gb, cwd=None):
    """Runs a measuring worker (`command`, which prints its row as JSON on its last line) under
    `run_with_memory_limit`. -> {"fits": True, **row}, or {"fits": False, "error": ...} when it passed `limit_gb`
    (with the peak seen) or failed (with the last line of its stderr)."""
    returncode, stdout, stderr, peak, killed = run_with_memory_limit(command, limit_gb, cwd=cwd)
    if killed:
        return {"fits": False, "error": f"resident memory passed {limit_gb} GiB", "peak_rss_gb": peak}
    if returncode != 0:
        return {"fits": False, "error": stderr.strip().splitlines()[-1][:300] if stderr else f"exit {returncode}"}
    return {"fits": True, **json.loads(stdout.strip().splitlines()[-1])}
