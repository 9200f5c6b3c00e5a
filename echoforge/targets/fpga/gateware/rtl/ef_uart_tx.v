// UART transmitter, 8N1, LSB first: takes a byte when `valid && ready`.
`default_nettype none
module ef_uart_tx #(
    parameter integer CLKS_PER_BIT = 4
) (
    input  wire       clk,
    input  wire       rst,
    input  wire [7:0] data,
    input  wire       valid,
    output wire       ready,
    output wire       tx
);
    localparam integer FULL_COUNT = CLKS_PER_BIT - 1;
    localparam [15:0]  FULL       = FULL_COUNT[15:0];

    reg [9:0]  shift;      // stop bit, data LSB first, start bit: shifted out from bit 0
    reg [3:0]  bits_left;
    reg [$clog2(CLKS_PER_BIT)-1:0] count;   // clocks into the bit

    assign ready = (bits_left == 4'd0);
    assign tx    = (bits_left == 4'd0) ? 1'b1 : shift[0];

    always @(posedge clk) begin
        if (rst) begin
            bits_left <= 4'd0;
            count     <= 16'd0;
            shift     <= 10'h3FF;
        end else if (bits_left == 4'd0) begin
            if (valid) begin
                shift     <= {1'b1, data, 1'b0};
                bits_left <= 4'd10;
                count     <= 16'd0;
            end
        end else if (count == FULL) begin
            count     <= 16'd0;
            shift     <= {1'b1, shift[9:1]};
            bits_left <= bits_left - 4'd1;
        end else count <= count + 16'd1;
    end
endmodule
`default_nettype wire
