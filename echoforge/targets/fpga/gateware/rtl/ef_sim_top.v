// Simulation harness: the board image with the host's end of the serial line, as an FTDI chip would
// be. The C++ bridge (sim_main.cpp) pushes the host's bytes into `host_*` and collects the board's
// from `board_*`; every bit crosses the UART lines at CLKS_PER_BIT clocks per bit.
`default_nettype none
module ef_sim_top #(
    parameter integer CLKS_PER_BIT = 4,
    parameter integer RX_AW        = 12,
    parameter integer MAX_REQ      = 4081,
    parameter integer TX_AW        = 12
) (
    input  wire        clk,
    input  wire        rst,
    input  wire [31:0] entropy,
    input  wire [7:0]  host_data,
    input  wire        host_valid,
    output wire        host_ready,
    output wire [7:0]  board_data,
    output wire        board_valid,
    output wire        active           // the board is working or a byte is on the line
);
    wire to_board, to_host, board_busy;

    ef_uart_tx #(.CLKS_PER_BIT(CLKS_PER_BIT)) host_tx (
        .clk(clk), .rst(rst), .data(host_data), .valid(host_valid), .ready(host_ready), .tx(to_board));

    ef_board #(.CLKS_PER_BIT(CLKS_PER_BIT), .RX_AW(RX_AW), .MAX_REQ(MAX_REQ), .TX_AW(TX_AW)) board (
        .clk(clk), .rst(rst), .uart_rx(to_board), .uart_tx(to_host), .entropy(entropy), .busy(board_busy));

    ef_uart_rx #(.CLKS_PER_BIT(CLKS_PER_BIT)) host_rx (
        .clk(clk), .rst(rst), .rx(to_host), .data(board_data), .valid(board_valid));

    assign active = board_busy || !host_ready || !to_host;
endmodule
`default_nettype wire
