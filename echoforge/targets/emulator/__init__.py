"""The fixed-point emulator target: reference integer semantics of the oscillator bank (DESIGN §4).

Read the module docstrings in order for the normative definitions an FPGA port implements:
``fixed`` (formats, rounding, saturation), ``tables`` (integer tanh, log cosh, sigmoid, GELU),
``kernels`` (the integer leapfrog, its reversibility, the echo and its accumulators), ``core``
(quantisation of parameters and nudges, the choice of ε, gradients from the accumulators).
``float_lanes`` is not a definition but a faster implementation of ``kernels``' linear forward and
echo, the same bits, for the linear banks its docstring names (every one up to 25-bit words).
"""

import importlib

# Public name → submodule, loaded on first use (PEP 562): the target registry imports this package's
# target.py to build the CLI's parsers, which must not compile kernels.
_HOMES = {**dict.fromkeys(("EchoInt", "EmulatorCore", "ForwardInt", "SaturationReport"), "core"),
          "Fixed": "fixed", "FormatConfig": "fixed", "FixedFunctions": "tables"}


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


__all__ = ["EchoInt", "EmulatorCore", "Fixed", "FixedFunctions", "FormatConfig", "ForwardInt",
           "SaturationReport"]
