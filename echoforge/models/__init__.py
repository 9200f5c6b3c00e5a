"""HRUs and HSSMs in PyTorch, trained by BPTT or by RHEL."""

from .core import EchoResult, FloatCore, HamiltonianCore, OscillatorParams
from .hru import HRU, LinHRU, NonlinHRU
from .hssm import HSSM

__all__ = ["HRU", "HSSM", "EchoResult", "FloatCore", "HamiltonianCore", "LinHRU", "NonlinHRU",
           "OscillatorParams"]
