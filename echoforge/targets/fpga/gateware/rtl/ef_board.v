// The board image: UART, frame receiver, protocol engine, frame transmitter and, with `define EF_CORE,
// the command executor around the generated oscillator bank (ef_commands, echoforge_bank). One clock
// domain, synchronous active-high reset. `entropy` seeds the boot epoch (tie it to a free-running
// counter).
`default_nettype none
module ef_board #(
    parameter integer CLKS_PER_BIT = 4,      // f_clk / baud
    parameter integer RX_AW        = 12,     // request buffer 2^RX_AW bytes
    parameter integer MAX_REQ      = 4081,   // largest request payload (SYNC), ≤ 2^RX_AW − 15
    parameter integer TX_AW        = 12      // response buffer 2^TX_AW bytes (cache + control frames)
) (
    input  wire        clk,
    input  wire        rst,
    input  wire        uart_rx,
    output wire        uart_tx,
    input  wire [31:0] entropy,
    output wire        busy
);
    wire [7:0]       rx_byte;
    wire             rx_valid;
    wire             frame, damaged, accept;
    wire [7:0]       f_type, f_flags;
    wire [15:0]      f_seq, f_opcode;
    wire [31:0]      f_length;
    wire [31:0]      f_epoch;
    wire [RX_AW-1:0] rd_addr;
    wire [7:0]       rd_data;
    wire             hash_init, hash_feed, hash_busy;
    wire [7:0]       hash_data;
    wire [31:0]      hash;
    wire             tx_start, tx_region, tx_we, tx_resend, tx_idle;
    wire [TX_AW-1:0] tx_addr;
    wire [7:0]       tx_type, tx_flags, tx_data;
    wire [15:0]      tx_seq, tx_opcode;
    wire [31:0]      tx_length;
    wire [7:0]       out_data;
    wire             out_valid, out_ready, engine_busy;
    wire             cmd_start, cmd_clear, cmd_done, cmd_failed, cmd_we;
    wire [15:0]      cmd_code;
    wire [31:0]      cmd_length;
    wire [TX_AW-1:0] cmd_addr;
    wire [7:0]       cmd_data;

    ef_uart_rx #(.CLKS_PER_BIT(CLKS_PER_BIT)) receiver (
        .clk(clk), .rst(rst), .rx(uart_rx), .data(rx_byte), .valid(rx_valid));

    ef_frame_rx #(.AW(RX_AW), .MAX_REQ(MAX_REQ)) frames_in (
        .clk(clk), .rst(rst), .in_data(rx_byte), .in_valid(rx_valid), .accept(accept),
        .frame(frame), .damaged(damaged), .f_type(f_type), .f_flags(f_flags), .f_seq(f_seq),
        .f_opcode(f_opcode), .f_length(f_length), .f_epoch(f_epoch), .rd_addr(rd_addr),
        .rd_data(rd_data),
        .hash_init(hash_init), .hash_feed(hash_feed), .hash_data(hash_data), .hash(hash), .hash_busy(hash_busy));

    ef_engine #(.TX_AW(TX_AW)) engine (
        .clk(clk), .rst(rst), .entropy(entropy), .byte_seen(rx_valid),
        .frame(frame), .damaged(damaged), .accept(accept), .f_type(f_type), .f_seq(f_seq),
        .f_opcode(f_opcode), .f_length(f_length), .f_epoch(f_epoch),
        .cmd_start(cmd_start), .cmd_clear(cmd_clear), .cmd_done(cmd_done), .cmd_failed(cmd_failed),
        .cmd_code(cmd_code), .cmd_length(cmd_length), .cmd_we(cmd_we), .cmd_addr(cmd_addr), .cmd_data(cmd_data),
        .tx_start(tx_start), .tx_region(tx_region), .tx_type(tx_type), .tx_flags(tx_flags), .tx_seq(tx_seq),
        .tx_opcode(tx_opcode), .tx_length(tx_length), .tx_we(tx_we), .tx_addr(tx_addr), .tx_data(tx_data),
        .tx_resend(tx_resend), .tx_idle(tx_idle), .busy(engine_busy));

`ifdef EF_CORE
    ef_commands #(.RX_AW(RX_AW), .TX_AW(TX_AW)) commands (
        .clk(clk), .rst(rst), .start(cmd_start), .clear(cmd_clear), .opcode(f_opcode), .length(f_length),
        .done(cmd_done), .failed(cmd_failed), .error_code(cmd_code),
        .response_length(cmd_length), .rx_addr(rd_addr), .rx_data(rd_data), .hash_init(hash_init),
        .hash_feed(hash_feed), .hash_data(hash_data), .crc(hash), .crc_busy(hash_busy), .tx_we(cmd_we),
        .tx_addr(cmd_addr), .tx_data(cmd_data));
`else
    assign {cmd_done, cmd_failed, cmd_code, cmd_length, cmd_we, cmd_addr, cmd_data} = 0;  // no core commands
    assign rd_addr = {RX_AW{1'b0}};
    assign {hash_init, hash_feed, hash_data} = 0;
`endif

    ef_frame_tx #(.AW(TX_AW)) frames_out (
        .clk(clk), .rst(rst), .start(tx_start), .region(tx_region), .h_type(tx_type), .h_flags(tx_flags),
        .h_seq(tx_seq), .h_opcode(tx_opcode), .h_length(tx_length), .pw_we(tx_we), .pw_addr(tx_addr),
        .pw_data(tx_data), .resend(tx_resend), .idle(tx_idle),
        .out_data(out_data), .out_valid(out_valid), .out_ready(out_ready));

    ef_uart_tx #(.CLKS_PER_BIT(CLKS_PER_BIT)) transmitter (
        .clk(clk), .rst(rst), .data(out_data), .valid(out_valid), .ready(out_ready), .tx(uart_tx));

    assign busy = engine_busy || !out_ready;
endmodule
`default_nettype wire
