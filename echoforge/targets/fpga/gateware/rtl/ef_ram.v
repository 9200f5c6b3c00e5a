// A single-port byte RAM with a registered read: the frame buffers. A clock either writes `wdata` at
// `addr` or reads `addr` into `rdata` (held through writes), so one port serves both the receiver's
// writes and the reader's reads as long as they take turns — which the protocol makes them do.
// With `define EF_SPRAM (iCE40 UltraPlus builds) it is an SB_SPRAM256KA (16K × 16 bits, up to
// 2^15 bytes), which leaves the part's 30 block RAMs to the bank; otherwise inferred block RAM.
`default_nettype none
module ef_ram #(
    parameter integer AW = 12                 // 2^AW bytes
) (
    input  wire          clk,
    input  wire          we,
    input  wire [AW-1:0] addr,
    input  wire [7:0]    wdata,
    output wire [7:0]    rdata
);
`ifdef EF_SPRAM
    wire [14:0] byte_at = {{(15 - AW){1'b0}}, addr};
    wire [15:0] word;
    reg         high;                         // the byte read is the word's upper one
    SB_SPRAM256KA ram (
        .ADDRESS(byte_at[14:1]), .DATAIN({wdata, wdata}), .MASKWREN(byte_at[0] ? 4'b1100 : 4'b0011),
        .WREN(we), .CHIPSELECT(1'b1), .CLOCK(clk), .STANDBY(1'b0), .SLEEP(1'b0), .POWEROFF(1'b1),
        .DATAOUT(word));
    always @(posedge clk) high <= byte_at[0];
    assign rdata = high ? word[15:8] : word[7:0];
`else
    reg [7:0] memory [0:(1 << AW) - 1];
    reg [7:0] data;
    always @(posedge clk)
        if (we) memory[addr] <= wdata;
        else data <= memory[addr];
    assign rdata = data;
`endif
endmodule
`default_nettype wire
