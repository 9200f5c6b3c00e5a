"""The FPGA board image ("gateware"): the device protocol (docs/protocol.md) in synthesizable Verilog —
UART, COBS framing, CRC-32, header, ACK/NACK, sequence numbers and the response cache, HELLO and
RESET — simulated with Verilator behind a real pseudo-terminal (docs/fpga.md, "Board image")."""
