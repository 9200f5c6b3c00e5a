"""Hardware-in-the-loop training: host layers in torch, oscillator banks on Hamiltonian cores."""

import importlib

__all__ = ["Gradients", "bank_parameter_names", "banks_on", "gradients"]


def __getattr__(name):
    """Load on first use (PEP 562): `echoforge --help` should not import torch."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(".banks", __name__), name)
