// The protocol engine: the link layer's device rules (docs/protocol.md §5–6) and the commands of §10.
//
// Per valid frame from ef_frame_rx:
//   not a request (ACK, NACK, a response opcode) ........ ignored (D3)
//   SYNC .................................................. answered with the largest request payload, cached (§5.5)
//   the cached sequence number ............................ the cached response, byte for byte; no ACK (D2)
//   any other ............................................. ACK, execute, respond, cache (D2)
// A damaged frame attempt makes a NACK; several before it goes out make one. The boot epoch is drawn
// from `entropy` when the first byte arrives (on a board a free-running counter: the host's first byte
// comes at a random clock), never 0; RESET keeps it.
//
// Commands: HELLO answers the board's declared limits (ef_rom.vh, generated from the same
// Capabilities the host decodes); RESET; every other opcode UNKNOWN_OPCODE. Requests are checked in
// the protocol's order: opcode, length of the fixed fields, epoch, the command's own rules (§10.2).
`default_nettype none
module ef_engine #(
    parameter integer RX_AW = 12
) (
    input  wire          clk,
    input  wire          rst,
    input  wire [31:0]   entropy,
    input  wire          byte_seen,      // a byte arrived on the line
    // from ef_frame_rx
    input  wire          frame,
    input  wire          damaged,
    output wire          accept,
    input  wire [7:0]    f_type,
    input  wire [15:0]   f_seq,
    input  wire [15:0]   f_opcode,
    input  wire [31:0]   f_length,
    input  wire [127:0]  f_fields,
    // to ef_frame_tx
    output wire          tx_start,
    output wire          tx_region,
    output wire [7:0]    tx_type,
    output wire [7:0]    tx_flags,
    output wire [15:0]   tx_seq,
    output wire [15:0]   tx_opcode,
    output wire [31:0]   tx_length,
    output wire          tx_push,
    output wire [7:0]    tx_data,
    input  wire          tx_push_ready,
    output wire          tx_resend,
    input  wire          tx_idle,
    output wire          busy
);
`include "ef_rom.vh"
    localparam [3:0] IDLE = 4'd0, DISPATCH = 4'd1, NACK = 4'd2, ACK = 4'd3, ACK_WAIT = 4'd4, EXECUTE = 4'd5,
                     RESPOND = 4'd6, PUSH = 4'd7, RESEND = 4'd8, SEND_WAIT = 4'd9, NACK_WAIT = 4'd10;
    localparam [15:0] SYNC = 16'h0000, HELLO = 16'h0001, RESET = 16'h0002;
    localparam [7:0]  DATA_FRAME = 8'd1, ACK_FRAME = 8'd2, NACK_FRAME = 8'd3, ERROR_FLAG = 8'h01;

    reg [3:0]          state;
    reg                nack_pending;
    reg                held;             // a frame waits in ef_frame_rx or is being answered
    reg                cache_valid;
    reg [15:0]         cache_seq;
    reg [31:0]         epoch;
    reg                epoch_drawn;
    reg [ROM_AW-1:0]   rom_at, rom_end;  // the response payload: ROM bytes rom_at .. rom_end − 1
    reg                error_response;

    wire [31:0] request_epoch = f_fields[31:0];
    wire        epoch_byte    = (rom_at >= HELLO_AT + 4) && (rom_at < HELLO_AT + 8);
    wire [1:0]  epoch_index   = rom_at[1:0] - HELLO_AT[1:0];

    assign accept    = !held && !frame;
    assign busy      = (state != IDLE) || !tx_idle || nack_pending || held;
    assign tx_start  = (state == NACK) || (state == ACK) || (state == RESPOND);
    assign tx_region = (state != RESPOND);
    assign tx_type   = (state == NACK) ? NACK_FRAME : (state == ACK) ? ACK_FRAME : DATA_FRAME;
    assign tx_flags  = (state == RESPOND && error_response) ? ERROR_FLAG : 8'd0;
    assign tx_seq    = (state == NACK) ? 16'd0 : f_seq;
    assign tx_opcode = (state == RESPOND) ? (f_opcode | 16'h8000) : 16'd0;
    assign tx_length = (state == RESPOND) ? {{(32 - ROM_AW){1'b0}}, rom_end - rom_at} : 32'd0;
    assign tx_push   = (state == PUSH) && (rom_at != rom_end);
    assign tx_data   = epoch_byte ? epoch[8 * epoch_index +: 8] : rom_byte(rom_at);
    assign tx_resend = (state == RESEND);

    // The response to the request in f_*: a slice of the ROM, an error or a result.
    task answer;
        input [ROM_AW-1:0] at;
        input [ROM_AW-1:0] length;
        input              error;
        begin
            rom_at         <= at;
            rom_end        <= at + length;
            error_response <= error;
            state          <= RESPOND;
        end
    endtask

    always @(posedge clk) begin
        if (rst) begin
            state        <= IDLE;
            nack_pending <= 1'b0;
            held         <= 1'b0;
            cache_valid  <= 1'b0;
            epoch_drawn  <= 1'b0;
            epoch        <= 32'd1;
        end else begin
            if (byte_seen && !epoch_drawn) begin
                epoch       <= (entropy == 32'd0) ? 32'd1 : entropy;
                epoch_drawn <= 1'b1;
            end
            if (damaged) nack_pending <= 1'b1;
            if (frame) held <= 1'b1;
            case (state)
                IDLE: if (nack_pending) state <= NACK;     // the damage came before the held frame
                      else if (held) state <= DISPATCH;
                DISPATCH:
                    if (f_type != DATA_FRAME || f_opcode[15]) begin
                        held  <= 1'b0;
                        state <= IDLE;
                    end
                    else if (f_opcode == SYNC) answer(SYNC_AT, SYNC_LEN, 1'b0);
                    else if (cache_valid && f_seq == cache_seq) state <= RESEND;
                    else state <= ACK;
                NACK: begin
                    nack_pending <= damaged;
                    state        <= NACK_WAIT;
                end
                NACK_WAIT: if (tx_idle) state <= IDLE;
                ACK: state <= ACK_WAIT;
                ACK_WAIT: if (tx_idle) state <= EXECUTE;
                EXECUTE: case (f_opcode)
                    HELLO: if (f_length != 32'd0) answer(BAD_PAYLOAD_AT, BAD_PAYLOAD_LEN, 1'b1);
                           else answer(HELLO_AT, HELLO_LEN, 1'b0);
                    RESET: if (f_length < 32'd4) answer(BAD_PAYLOAD_AT, BAD_PAYLOAD_LEN, 1'b1);
                           else if (request_epoch != epoch) answer(STALE_EPOCH_AT, STALE_EPOCH_LEN, 1'b1);
                           else if (f_length != 32'd4) answer(BAD_PAYLOAD_AT, BAD_PAYLOAD_LEN, 1'b1);
                           else answer(EMPTY_AT, 0, 1'b0);
                    default: answer(UNKNOWN_OPCODE_AT, UNKNOWN_OPCODE_LEN, 1'b1);
                endcase
                RESPOND: begin
                    cache_valid <= 1'b1;          // the response region now holds this request's answer
                    cache_seq   <= f_seq;
                    state       <= PUSH;
                end
                PUSH: if (rom_at == rom_end) state <= SEND_WAIT;
                      else if (tx_push_ready) rom_at <= rom_at + 1'b1;
                RESEND: state <= SEND_WAIT;
                SEND_WAIT: if (tx_idle) begin
                    held  <= 1'b0;
                    state <= IDLE;
                end
                default: state <= IDLE;
            endcase
        end
    end
endmodule
`default_nettype wire
