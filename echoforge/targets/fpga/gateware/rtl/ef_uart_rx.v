// UART receiver, 8N1, LSB first. CLKS_PER_BIT = f_clk / baud (the FTDI chips of iCE40 boards reach
// 3 Mbaud: 12 MHz / 3 Mbaud = 4). A byte whose stop bit reads 0 (framing error) is dropped: to the
// protocol above it is a lost byte, which framing and CRC already handle.
`default_nettype none
module ef_uart_rx #(
    parameter integer CLKS_PER_BIT = 4
) (
    input  wire       clk,
    input  wire       rst,
    input  wire       rx,
    output reg  [7:0] data,
    output reg        valid
);
    localparam [1:0] IDLE = 2'd0, START = 2'd1, BITS = 2'd2, STOP = 2'd3;
    localparam integer HALF_COUNT = CLKS_PER_BIT / 2 - 1;
    localparam integer FULL_COUNT = CLKS_PER_BIT - 1;
    localparam [15:0]  HALF       = HALF_COUNT[15:0];
    localparam [15:0]  FULL       = FULL_COUNT[15:0];

    reg        rx_meta, rx_sync;   // two-flop synchronizer of the asynchronous line
    reg [1:0]  state;
    reg [$clog2(CLKS_PER_BIT)-1:0] count;   // clocks into the bit
    reg [2:0]  bit_index;
    reg [7:0]  shift;

    always @(posedge clk) begin
        rx_meta <= rx;
        rx_sync <= rx_meta;
        valid   <= 1'b0;
        if (rst) begin
            rx_meta <= 1'b1;
            rx_sync <= 1'b1;
            state   <= IDLE;
            count   <= 16'd0;
        end else begin
            case (state)
                IDLE: if (!rx_sync) begin
                    state <= START;
                    count <= 16'd0;
                end
                START: if (count == HALF) begin       // middle of the start bit
                    state     <= rx_sync ? IDLE : BITS; // a glitch shorter than half a bit is ignored
                    count     <= 16'd0;
                    bit_index <= 3'd0;
                end else count <= count + 16'd1;
                BITS: if (count == FULL) begin
                    count     <= 16'd0;
                    shift     <= {rx_sync, shift[7:1]};
                    bit_index <= bit_index + 3'd1;
                    if (bit_index == 3'd7) state <= STOP;
                end else count <= count + 16'd1;
                STOP: if (count == FULL) begin
                    state <= IDLE;
                    if (rx_sync) begin
                        data  <= shift;
                        valid <= 1'b1;
                    end
                end else count <= count + 16'd1;
            endcase
        end
    end
endmodule
`default_nettype wire
