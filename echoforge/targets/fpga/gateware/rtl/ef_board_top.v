// The board image on a real board: its oscillator on CLK, its USB-serial chip on RX/TX (the pins are in
// the board's constraints, bitstream.BOARDS: iCEBreaker, ULX3S). Reset is held for the first 128 clocks
// after configuration; the boot epoch's entropy is the clock count when the host's first byte arrives.
`default_nettype none
module ef_board_top #(
    parameter integer CLKS_PER_BIT = 104,    // f_clk / baud: 12 MHz / 115,200 baud (4: 3 Mbaud)
    parameter integer RX_AW        = 12,
    parameter integer MAX_REQ      = 4081,
    parameter integer TX_AW        = 12
) (
    input  wire CLK,
    input  wire RX,
    output wire TX
);
    reg  [7:0]  reset_count = 8'd0;          // flip-flops configure to their init value
    reg  [31:0] ticks = 32'd0;
    wire        rst = !reset_count[7];
    always @(posedge CLK) begin
        if (rst) reset_count <= reset_count + 8'd1;
        ticks <= ticks + 32'd1;
    end

    ef_board #(.CLKS_PER_BIT(CLKS_PER_BIT), .RX_AW(RX_AW), .MAX_REQ(MAX_REQ), .TX_AW(TX_AW)) board (
        .clk(CLK), .rst(rst), .uart_rx(RX), .uart_tx(TX), .entropy(ticks), .busy());
endmodule
`default_nettype wire
