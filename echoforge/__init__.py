"""echoforge: train Hamiltonian state-space models with RHEL and take them to hardware.

The public Python API (docs/api.md) is importable from here; each name loads its module on first use
(PEP 562), so `import echoforge` and `echoforge --help` stay fast.
"""

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "HSSM": "echoforge.models.hssm",
    "load_config": "echoforge.models.training",
    "Trainer": "echoforge.models.training",
    "load_dataset": "echoforge.models.data",
    "load_model": "echoforge.compiler.frontend_checkpoint",
    "load_program": "echoforge.targets.emulator.lower",
    "EmulatedModel": "echoforge.targets.emulator.emulated",
    "Device": "echoforge.runtime.device",
    "DeviceCore": "echoforge.runtime.device",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__():
    return sorted(set(globals()) | set(_API))
