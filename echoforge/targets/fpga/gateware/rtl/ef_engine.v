// The protocol engine: the link layer's device rules (docs/protocol.md §5–6) and the command dispatch
// of §10.
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
// Commands: HELLO answers the board's declared limits (ef_rom.vh, generated from the same Capabilities
// the host decodes); RESET; with the oscillator core (`define EF_CORE) the core commands go to
// ef_commands after the checks every command shares, in the protocol's order (§10.2): opcode
// (UNKNOWN_OPCODE), length of the epoch and fixed fields (BAD_PAYLOAD), epoch (STALE_EPOCH).
`default_nettype none
module ef_engine #(
    parameter integer TX_AW = 12
) (
    input  wire             clk,
    input  wire             rst,
    input  wire [31:0]      entropy,
    input  wire             byte_seen,      // a byte arrived on the line
    // from ef_frame_rx
    input  wire             frame,
    input  wire             damaged,
    output wire             accept,
    input  wire [7:0]       f_type,
    input  wire [15:0]      f_seq,
    input  wire [15:0]      f_opcode,
    input  wire [31:0]      f_length,
    input  wire [31:0]      f_epoch,
    // to ef_commands
    output wire             cmd_start,
    output wire             cmd_clear,
    input  wire             cmd_done,
    input  wire             cmd_failed,
    input  wire [15:0]      cmd_code,
    input  wire [31:0]      cmd_length,
    input  wire             cmd_we,         // ef_commands' response payload writes
    input  wire [TX_AW-1:0] cmd_addr,
    input  wire [7:0]       cmd_data,
    // to ef_frame_tx
    output wire             tx_start,
    output wire             tx_region,
    output wire [7:0]       tx_type,
    output wire [7:0]       tx_flags,
    output wire [15:0]      tx_seq,
    output wire [15:0]      tx_opcode,
    output wire [31:0]      tx_length,
    output wire             tx_we,
    output wire [TX_AW-1:0] tx_addr,
    output wire [7:0]       tx_data,
    output wire             tx_resend,
    input  wire             tx_idle,
    output wire             busy
);
`include "ef_rom.vh"
`include "ef_above.vh"
    localparam [3:0] IDLE = 4'd0, DISPATCH = 4'd1, NACK = 4'd2, ACK = 4'd3, ACK_WAIT = 4'd4, EXECUTE = 4'd5,
                     RESPOND = 4'd6, COPY = 4'd7, RESEND = 4'd8, SEND_WAIT = 4'd9, NACK_WAIT = 4'd10,
                     COMMAND = 4'd11;
    localparam [15:0] SYNC = 16'h0000, HELLO = 16'h0001, RESET = 16'h0002;
    localparam [7:0]  DATA_FRAME = 8'd1, ACK_FRAME = 8'd2, NACK_FRAME = 8'd3, ERROR_FLAG = 8'h01;
`ifdef EF_CORE
    localparam CORE = 1'b1;
`else
    localparam CORE = 1'b0;
`endif

    reg [3:0]          state;
    reg                nack_pending;
    reg                held;             // a frame waits in ef_frame_rx or is being answered
    reg                cache_valid;
    reg [15:0]         cache_seq;
    reg [31:0]         epoch;
    reg                epoch_drawn;
    reg [ROM_AW-1:0]   rom_base, rom_at, rom_end;  // a constant payload: ROM bytes rom_at .. rom_end − 1
    reg                error_response;
    reg [15:0]         response_length;  // ≤ the response buffer (2^TX_AW ≤ 2^16 bytes)
    reg                clear_pending;    // RESET executed: clear the command state (one clock)

    // Fixed fields after the epoch, per command (commands.REQUEST_FIELDS); −1: not a core command.
    reg signed [4:0] fixed;
    always @(*) begin
        case (f_opcode)
            16'h0010: fixed = 5'sd0;   // LOAD_PROGRAM
            16'h0011: fixed = 5'sd1;   // WRITE_PARAMS
            16'h0012: fixed = 5'sd7;   // WRITE_STATE
            16'h0013: fixed = 5'sd6;   // READ_STATE
            16'h0020: fixed = 5'sd8;   // BEGIN_FORWARD
            16'h0021: fixed = 5'sd8;   // FORWARD_CHUNK
            16'h0022: fixed = 5'sd0;   // END_FORWARD
            16'h0030: fixed = 5'sd8;   // BEGIN_ECHO
            16'h0031: fixed = 5'sd8;   // ECHO_CHUNK
            16'h0032: fixed = 5'sd0;   // END_ECHO
            16'h0033: fixed = 5'sd5;   // READ_OBSERVABLES
            default:  fixed = -5'sd1;
        endcase
    end
    wire [31:0] request_epoch = f_epoch;
    wire [15:0] f_bytes       = f_length[15:0];   // ef_frame_rx passes no payload beyond its buffer (≤ 2^16 bytes)
    wire [15:0] fixed_length  = 16'd4 + {{11{fixed[4]}}, fixed};
    wire        long_enough   = (|f_bytes[15:4]) || f_bytes[3:0] >= fixed_length[3:0];   // fixed_length ≤ 12
    wire        epoch_byte    = above(rom_at, HELLO_AT + 3) && !above(rom_at, HELLO_AT + 7);
    wire [1:0]  epoch_index   = rom_at[1:0] - HELLO_AT[1:0];
    wire [ROM_AW-1:0] error_at  = error_entry(cmd_code) >> ROM_AW;
    wire [ROM_AW-1:0] error_len = error_entry(cmd_code);

    assign accept    = !held && !frame;
    assign busy      = (state != IDLE) || !tx_idle || nack_pending || held;
    assign cmd_start = (state == EXECUTE) && CORE && fixed >= 0 && long_enough && request_epoch == epoch;
    assign cmd_clear = clear_pending;
    assign tx_start  = (state == NACK) || (state == ACK) || (state == RESPOND);
    assign tx_region = (state != RESPOND);
    // The header fields hold from tx_start until the transmitter is idle again (it does not copy them):
    // each *_WAIT state answers as the state that started the frame, and the request stays held meanwhile
    // (a NACK's sequence number is 0, whatever frame arrives while it is sent).
    wire        nacking  = (state == NACK) || (state == NACK_WAIT);
    wire        acking   = (state == ACK) || (state == ACK_WAIT);
    wire        replying = (state == RESPOND) || (state == SEND_WAIT);
    assign tx_type   = nacking ? NACK_FRAME : acking ? ACK_FRAME : DATA_FRAME;
    assign tx_flags  = (replying && error_response) ? ERROR_FLAG : 8'd0;
    assign tx_seq    = nacking ? 16'd0 : f_seq;
    assign tx_opcode = replying ? (f_opcode | 16'h8000) : 16'd0;
    assign tx_length = replying ? {16'd0, response_length} : 32'd0;
    assign tx_we     = (state == COPY && rom_at != rom_end) || (state == COMMAND && cmd_we);
    wire [ROM_AW-1:0] rom_offset = rom_at - rom_base;
    assign tx_addr   = (state == COMMAND) ? cmd_addr : rom_offset;
    assign tx_data   = (state == COMMAND) ? cmd_data : epoch_byte ? epoch[8 * epoch_index +: 8] : rom_byte(rom_at);
    assign tx_resend = (state == RESEND);

    // Answer with ROM bytes at .. at + length − 1 (a constant payload or an error).
    task answer;
        input [ROM_AW-1:0] at;
        input [ROM_AW-1:0] length;
        input              error;
        begin
            rom_base        <= at;
            rom_at          <= at;
            rom_end         <= at + length;
            response_length <= {{(16 - ROM_AW){1'b0}}, length};
            error_response  <= error;
            state           <= COPY;
        end
    endtask

    always @(posedge clk) begin
        if (rst) begin
            state         <= IDLE;
            nack_pending  <= 1'b0;
            held          <= 1'b0;
            cache_valid   <= 1'b0;
            epoch_drawn   <= 1'b0;
            epoch         <= 32'd1;
            clear_pending <= 1'b0;
        end else begin
            if (byte_seen && !epoch_drawn) begin
                epoch       <= (entropy == 32'd0) ? 32'd1 : entropy;
                epoch_drawn <= 1'b1;
            end
            if (damaged) nack_pending <= 1'b1;
            if (frame) held <= 1'b1;
            if (clear_pending) clear_pending <= 1'b0;
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
                EXECUTE:
                    if (f_opcode == HELLO) begin
                        if (f_bytes != 16'd0) answer(BAD_PAYLOAD_AT, BAD_PAYLOAD_LEN, 1'b1);
                        else answer(HELLO_AT, HELLO_LEN, 1'b0);
                    end else if (f_opcode == RESET) begin
                        if (!above(f_bytes, 3)) answer(BAD_PAYLOAD_AT, BAD_PAYLOAD_LEN, 1'b1);
                        else if (request_epoch != epoch) answer(STALE_EPOCH_AT, STALE_EPOCH_LEN, 1'b1);
                        else if (f_bytes != 16'd4) answer(BAD_PAYLOAD_AT, BAD_PAYLOAD_LEN, 1'b1);
                        else begin
                            clear_pending <= 1'b1;
                            answer(EMPTY_AT, 0, 1'b0);
                        end
                    end else if (!CORE || fixed < 0) answer(UNKNOWN_OPCODE_AT, UNKNOWN_OPCODE_LEN, 1'b1);
                    else if (!long_enough) answer(BAD_PAYLOAD_AT, BAD_PAYLOAD_LEN, 1'b1);
                    else if (request_epoch != epoch) answer(STALE_EPOCH_AT, STALE_EPOCH_LEN, 1'b1);
                    else state <= COMMAND;                  // cmd_start is high in this clock
                COMMAND: if (cmd_done) begin
                    if (cmd_failed) answer(error_at, error_len, 1'b1);
                    else begin
                        response_length <= cmd_length[15:0];
                        error_response  <= 1'b0;
                        state           <= RESPOND;
                    end
                end
                COPY: if (rom_at == rom_end) state <= RESPOND;
                      else rom_at <= rom_at + 1'b1;
                RESPOND: begin
                    cache_valid <= 1'b1;          // the response region now holds this request's answer
                    cache_seq   <= f_seq;
                    state       <= SEND_WAIT;
                end
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
