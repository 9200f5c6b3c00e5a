"""The fixed-point emulator target: reference integer semantics of the oscillator bank (DESIGN §4).

Read the module docstrings in order for the normative definitions an FPGA port implements:
``fixed`` (formats, rounding, saturation), ``tables`` (integer tanh, log cosh, sigmoid, GELU),
``kernels`` (the integer leapfrog, its reversibility, the echo and its accumulators), ``core``
(quantisation of parameters and nudges, the choice of ε, gradients from the accumulators).
``float_lanes`` is not a definition but a faster implementation of ``kernels``' linear forward and
echo, the same bits, for the linear banks its docstring names (every one up to 25-bit words).
"""

from .core import EchoInt, EmulatorCore, ForwardInt, SaturationReport
from .fixed import Fixed, FormatConfig
from .tables import FixedFunctions

__all__ = ["EchoInt", "EmulatorCore", "Fixed", "FixedFunctions", "FormatConfig", "ForwardInt",
           "SaturationReport"]
