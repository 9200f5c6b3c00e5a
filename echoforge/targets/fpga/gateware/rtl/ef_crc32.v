// The running CRC-32 of ef_crc32.vh, a bit a clock: `feed` takes a byte (when not `busy`), which is in
// `crc` eight clocks later; `init` starts over. A byte-wide CRC is a 32-bit XOR network (~100 logic
// cells on an iCE40); this is a shift register and one XOR a bit. Its users feed at most a byte every
// eight clocks: the UART's bytes come every 10 · CLKS_PER_BIT ≥ 40 clocks, and the frame transmitter
// and the program hash wait on `busy`.
`default_nettype none
module ef_crc32 (
    input  wire        clk,
    input  wire        init,
    input  wire        feed,
    input  wire [7:0]  data,
    output reg  [31:0] crc,
    output wire        busy
);
`include "ef_crc32.vh"
    reg [7:0] shifting;                       // the byte's bits not yet in `crc`, next at bit 0
    reg [3:0] left;
    assign busy = (left != 4'd0);
    always @(posedge clk)
        if (init) begin
            crc  <= CRC_INIT;
            left <= 4'd0;
        end else if (feed) begin
            shifting <= data;
            left     <= 4'd8;
        end else if (busy) begin
            crc      <= (crc >> 1) ^ ((crc[0] ^ shifting[0]) ? 32'hEDB88320 : 32'd0);
            shifting <= shifting >> 1;
            left     <= left - 4'd1;
        end
endmodule
`default_nettype wire
