"""What a gradient step's process holds before its first step (issue 14): the resident set after each layer
of the stack is loaded, every layer in a fresh process, so the floor under bench_reference's peak memory
is measured, not guessed.

Layers, cumulative: the interpreter; `import torch`; echoforge's compiled C kernels loaded (both stream
types, from their cache: models/kernels.py); echoforge's HSSM of bench_reference's 16k configuration (2
blocks, hidden 16, state 16, batch 8, 6 inputs, 4 classes, float32, dropout off) after a warm-up
gradient step of 64 time steps, then after glibc's malloc_trim (what of that is freed heap). The probe
also reports whether numba (the emulator's JIT, ~115 MiB resident once it has compiled anything) was
imported on the way: a model's gradient step must not need it.

    python benchmarks/memory_floor.py [--hru linear nonlinear] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import write_section

PROBE = """
import ctypes, json, sys
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
layers = {"python": rss()}
import torch
torch.set_num_threads(1)
layers["+ torch"] = rss()
from echoforge.models import kernels
kernels.library("float"), kernels.library("double")
layers["+ echoforge's compiled kernels"] = rss()
from echoforge.models import HSSM
torch.manual_seed(0)
options = {"complex_state": False} if sys.argv[1] == "linear" else {}
model = HSSM(6, 4, hidden_size=16, state_size=16, num_blocks=2, hru=sys.argv[1], learning="rhel",
             dropout=0.0, **options)
x, y = torch.randn(8, 64, 6), torch.randint(0, 4, (8,))
torch.nn.functional.cross_entropy(model(x), y).backward()
layers["+ echoforge HSSM, warm"] = rss()
ctypes.CDLL("libc.so.6").malloc_trim(0)
layers["after malloc_trim"] = rss()
print(json.dumps({"layers": layers, "numba imported": "numba" in sys.modules}))
"""


def floor(hru: str, cache: Path) -> dict:
    """MiB resident after each layer, in a fresh process (the kernels' cache in `cache`, filled by a first
    run), and whether numba was imported."""
    run = subprocess.run([sys.executable, "-c", PROBE, hru], capture_output=True, text=True,
                         env={**os.environ, "ECHOFORGE_KERNEL_CACHE": str(cache)})
    if run.returncode:
        raise SystemExit(f"memory_floor: the {hru} probe failed: {run.stderr.strip().splitlines()[-1]}")
    return json.loads(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hru", nargs="+", default=["linear", "nonlinear"], choices=["linear", "nonlinear"])
    parser.add_argument("--write", action="store_true", help="replace this script's section of docs/results.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        for hru in args.hru:
            floor(hru, Path(cache))  # fills the kernels' cache: the measured runs load, as a user's second run does
        measured = {hru: floor(hru, Path(cache)) for hru in args.hru}
    layers = list(measured[args.hru[0]]["layers"])
    lines = ["| layer (cumulative) | " + " | ".join(f"{hru} HRU (MiB)" for hru in args.hru) + " |",
             "|---|" + "---:|" * len(args.hru)]
    lines += [f"| {layer} | " + " | ".join(f"{measured[hru]['layers'][layer]:.0f}" for hru in args.hru) + " |"
              for layer in layers]
    lines += ["| numba imported | " + " | ".join("yes" if measured[hru]["numba imported"] else "no"
                                                 for hru in args.hru) + " |"]
    body = "\n".join([
        "## What a step's process holds before its first step (benchmarks/memory_floor.py)", "",
        "Resident set (VmRSS) after each layer of the stack, each HRU in a fresh process, the compiled kernels' "
        "cache filled by an earlier run. bench_reference's peak memory counts all of it (its section of this file has the "
        "reference's peaks, ½ of which is the goal).", "", *lines])
    print(body)
    if args.write:
        write_section("memory_floor", body)


if __name__ == "__main__":
    main()
