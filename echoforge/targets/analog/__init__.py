"""The analog oscillator target: board descriptions, mapping, the analog twin, calibration, dissipation."""
