"""The FPGA target: Verilog generated for an oscillator bank (rtl), its co-simulation (sim, core) and the
parts it is synthesized for."""
