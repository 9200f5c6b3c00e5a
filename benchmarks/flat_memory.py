"""Can an undamped oscillator bank hold a flat memory? The adding problem read at the last step needs one.

A position's response to a unit forcing τ steps back is the bank's impulse response (the leapfrog of
`FloatCore`, step δ = 1). A last-step readout sees Σ_j C_j·response_j(τ), and the adding problem asks
it to be 1 for every τ = 1…L. This fits the readout C by least squares for P oscillators with
stiffnesses log-spaced over [a_min, 1] and reports how far from flat the best fit stays.

    python benchmarks/flat_memory.py [--length 1000 --sizes 16 32 64 128] [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from echoforge.models.core import FloatCore, OscillatorParams

sys.path.insert(0, str(Path(__file__).resolve().parent))


def impulse_responses(size: int, length: int, a_min: float) -> np.ndarray:
    """(length, size): position of each oscillator τ = 1…length steps after a unit forcing."""
    ones = np.ones(size)
    params = OscillatorParams("linear", a=np.geomspace(a_min, 1.0, size), delta=ones, w=ones, b=0 * ones, c=0 * ones)
    forcing = np.zeros((1, length, size))
    forcing[0, 0] = 1.0
    zeros = np.zeros((1, size))
    positions, _, _ = FloatCore(params).forward(forcing, zeros, zeros)
    return positions[0]


def best_flat_fit(size: int, length: int, a_min: float) -> dict:
    responses = impulse_responses(size, length, a_min)
    weights, *_ = np.linalg.lstsq(responses, np.ones(length), rcond=None)
    error = responses @ weights - 1.0
    return {"size": size, "rms": float(np.sqrt(np.mean(error ** 2))), "max": float(np.abs(error).max()),
            "last": float(np.abs(error[:5]).max()), "weight": float(np.abs(weights).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--a-min", type=float, default=1e-6)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = [best_flat_fit(size, args.length, args.a_min) for size in args.sizes]
    report = "\n".join([
        "## Flat memory from undamped oscillators (benchmarks/flat_memory.py)", "",
        f"Least-squares readout over P oscillators (stiffness log-spaced in [{args.a_min:g}, 1], δ = 1) "
        f"fitting a response of 1 to a forcing τ = 1…{args.length} steps back — what a last-step readout of "
        "the adding problem needs. 'last 5' is the error for a forcing in the final five steps.", "",
        "| oscillators | rms error | max error | max error, last 5 steps | largest readout weight |",
        "|---|---|---|---|---|",
        *(f"| {r['size']} | {r['rms']:.3f} | {r['max']:.3f} | {r['last']:.3f} | {r['weight']:.1e} |" for r in rows)])
    print(report)
    if args.write:
        from results_doc import write_section
        write_section("flat_memory", report)


if __name__ == "__main__":
    main()
