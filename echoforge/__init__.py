"""echoforge: train Hamiltonian state-space models with RHEL and take them to hardware."""

__version__ = "0.1.0"
