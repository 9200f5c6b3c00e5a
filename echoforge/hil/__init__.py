"""Hardware-in-the-loop training: host layers in torch, oscillator banks on Hamiltonian cores."""

from .gradients import Gradients, bank_parameter_names, banks_on, gradients

__all__ = ["Gradients", "bank_parameter_names", "banks_on", "gradients"]
