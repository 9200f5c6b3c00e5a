// The core commands of docs/protocol.md §10.5–10.8 on the generated oscillator bank (echoforge_bank):
// LOAD_PROGRAM, WRITE_PARAMS, WRITE_STATE, READ_STATE, BEGIN/END_FORWARD, FORWARD_CHUNK, BEGIN/END_ECHO,
// ECHO_CHUNK, READ_OBSERVABLES. The image declares one bank, batch 1 (HELLO), so a chunk's (B, K, P)
// arrays are (K, P): the core's stream order. The engine (ef_engine) has checked the opcode, the length
// of the epoch and fixed fields and the epoch; this module checks the command's own rules in the
// simulator's order, reads the whole request (a range pass over every sample) before it changes
// anything, executes, writes the response payload into the transmit buffer and reports its length,
// or an error code.
//
// The board's registers live here (STATE: ϕ, π per oscillator; ECHO: both echoes' ϕ, π and the
// accumulators), in one block RAM (`registers`); the core's lane memories are the active phase's
// working state: BEGIN_* loads them, END_* copies them back, so a phase changes the registers only
// when it completes (§10.1).
`default_nettype none
module ef_commands #(
    parameter integer RX_AW = 12,
    parameter integer TX_AW = 12
) (
    input  wire             clk,
    input  wire             rst,
    input  wire             start,          // execute the request held in ef_frame_rx
    input  wire             clear,          // RESET: no program, registers or phase
    input  wire [15:0]      opcode,
    input  wire [31:0]      length,         // payload bytes (the epoch included)
    input  wire [127:0]     fields,         // payload bytes 0..11
    input  wire             formats_tail,   // payload bytes 12..14 are FORMAT_BYTES[71:48] (ef_frame_rx)
    output reg              done,           // one clock: the response is written (or `failed`)
    output reg              failed,
    output reg  [15:0]      error_code,
    output reg  [31:0]      response_length,
    output wire [RX_AW-1:0] rx_addr,        // request payload byte, read one clock later
    input  wire [7:0]       rx_data,
    output wire             hash_init,      // the program hash: ef_frame_rx's CRC unit (idle while a request is
    output wire             hash_feed,      // held), ef_crc32's ports
    output wire [7:0]       hash_data,
    input  wire [31:0]      crc,
    input  wire             crc_busy,
    output wire             tx_we,          // response payload byte
    output wire [TX_AW-1:0] tx_addr,
    output wire [7:0]       tx_data
);
`include "ef_core.vh"
`include "ef_above.vh"
    // The command as a 4-bit code (0: none of these), so that each of the many compares below is one LUT
    localparam [3:0]  LOAD_PROGRAM = 4'd1, WRITE_PARAMS = 4'd2, WRITE_STATE = 4'd3, READ_STATE = 4'd4,
                      BEGIN_FORWARD = 4'd5, FORWARD_CHUNK = 4'd6, END_FORWARD = 4'd7, BEGIN_ECHO = 4'd8,
                      ECHO_CHUNK = 4'd9, END_ECHO = 4'd10, READ_OBSERVABLES = 4'd11;
    reg  [3:0]        op;
    always @* begin
        case (opcode)
            16'h0010: op = LOAD_PROGRAM;
            16'h0011: op = WRITE_PARAMS;
            16'h0012: op = WRITE_STATE;
            16'h0013: op = READ_STATE;
            16'h0020: op = BEGIN_FORWARD;
            16'h0021: op = FORWARD_CHUNK;
            16'h0022: op = END_FORWARD;
            16'h0030: op = BEGIN_ECHO;
            16'h0031: op = ECHO_CHUNK;
            16'h0032: op = END_ECHO;
            16'h0033: op = READ_OBSERVABLES;
            default:  op = 4'd0;
        endcase
    end
    localparam [15:0] BAD_PAYLOAD = 16'h0002, RESPONSE_TOO_LARGE = 16'h0003, NO_PROGRAM = 16'h0101,
                      BAD_PROGRAM = 16'h0102, BAD_BANK = 16'h0103, NO_STATE = 16'h0104, NO_PHASE = 16'h0105,
                      OUT_OF_ORDER = 16'h0106, OVER_CAPACITY = 16'h0107;
    localparam [1:0]  NONE = 2'd0, FORWARD = 2'd1, ECHO = 2'd2;

    // ---- request fields ----
    function [7:0] field_byte;
        input [3:0] at;
        field_byte = fields[8 * at +: 8];
    endfunction
    wire [7:0]  f_bank   = field_byte(4);
    wire [15:0] f_u16_5  = {field_byte(6), field_byte(5)};
    wire [15:0] f_u16_6  = {field_byte(7), field_byte(6)};
    wire [15:0] f_u16_7  = {field_byte(8), field_byte(7)};
    wire [15:0] f_u16_8  = {field_byte(9), field_byte(8)};
    wire [15:0] f_u16_9  = {field_byte(10), field_byte(9)};
    wire [31:0] f_u32_4  = {field_byte(7), field_byte(6), field_byte(5), field_byte(4)};
    wire [31:0] f_u32_8  = {field_byte(11), field_byte(10), field_byte(9), field_byte(8)};

    // ---- widths: what the protocol's checks leave (a wider request is refused before it is used) ----
    localparam integer PW = $clog2(PMAX) + 1;                      // P ≤ MAX_OSCILLATORS ≤ PMAX
    localparam integer SW = $clog2(MAX_CHUNK_STEPS) + 1;           // K ≤ MAX_CHUNK_STEPS
    localparam integer KW = SW + PW + 1;                           // K·P, and 2·K·P
    localparam integer CW = (RX_AW > $clog2(8 * PMAX) ? RX_AW : $clog2(8 * PMAX)) + 1;  // loop counts
    wire [RX_AW-1:0] len = length[RX_AW-1:0];                      // ≤ MAX_REQ < 2^RX_AW (ef_frame_rx)

    // ---- the board's state ----
    reg                 loaded;
    reg  [PW-1:0]       size;               // P of the loaded program
    reg  [PW-1:0]       new_size;           // P of the program LOAD_PROGRAM is checking (once it passes)
    reg                 state_valid, echo_valid;
    reg  [1:0]          phase;
    // The phase's length L and position (the next chunk's start forward, the last chunk's start in the echo),
    // u32 as the protocol's, are shift registers worked a bit a clock (SERIAL_*): their compares and updates
    // as 32-bit compares, adders and multiplexers were ~200 LUT4 of a few hundred clocks' work per request.
    reg  [31:0]         phase_length, position;
    reg                 counters_fresh;     // the phase's saturation counters are 0 (no chunk has run)
    // The registers as 64-bit words (ϕ and π sign-extended), read one clock after the address:
    // ECHO accumulators at p·8 + response row, STATE ϕ at 8·PMAX + p, π at 9·PMAX + p,
    // ECHO ϕ at 10·PMAX + σ·PMAX + p, π at 12·PMAX + σ·PMAX + p, the phase's four saturation counters
    // (u32, summed over its chunks) at 14·PMAX + k.
    localparam integer RF_AW = $clog2(16 * PMAX);
    localparam [RF_AW-1:0] STATE_AT = 8 * PMAX, ECHO_AT = 10 * PMAX, COUNTERS_AT = 14 * PMAX, PMAX_AT = PMAX;
    // (no state uses what it reads at an address it writes in the same clock: no read-during-write logic)
    (* no_rw_check *) reg [63:0] registers [0:16 * PMAX - 1];
    reg  [63:0]         rf_data;
    wire [RF_AW-1:0]    rf_read_at, rf_write_at;
    wire                rf_we;
    wire [63:0]         rf_wdata;

    // ---- the oscillator bank ----
    reg  [CORE_AW-1:0]  reg_addr;
    reg                 reg_we;
    // Everything the executor writes is a W-bit sample or lane (−π: W + 1 bits), 0, or a control value
    // (K, 2P, flags): BUS_BITS bits, sign-extended to the bus.
    localparam integer BUS_BITS = (WORD_BITS + 1 > SW + 1 ? WORD_BITS + 1 : SW + 1) > PW + 3
                                  ? (WORD_BITS + 1 > SW + 1 ? WORD_BITS + 1 : SW + 1) : PW + 3;
    reg  [BUS_BITS-1:0] bus_data;
    wire [63:0]         reg_wdata = {{(64 - BUS_BITS){bus_data[BUS_BITS-1]}}, bus_data};
    wire [63:0]         reg_rdata;
    wire                in_ready, out_valid, core_busy;
    reg                 in_valid;
    wire [2*WORD_BITS-1:0] in_data;
    wire                out_ready;
    wire [WORD_BITS:0]  out_data;
    echoforge_bank core (
        .clk(clk), .rst(rst), .reg_addr(reg_addr), .reg_we(reg_we), .reg_wdata(reg_wdata), .reg_rdata(reg_rdata),
        .in_valid(in_valid), .in_ready(in_ready), .in_data(in_data), .out_valid(out_valid), .out_ready(out_ready),
        .out_data(out_data), .busy(core_busy));

    // ---- the sequencer's state ----
    localparam [5:0] IDLE = 6'd0, CHECK = 6'd1, RANGE = 6'd2, RANGE_NEXT = 6'd3, APPLY = 6'd4, APPLY_NEXT = 6'd5,
                     CRC_HEADER = 6'd6, CRC_BODY = 6'd7, CRC_BYTE = 6'd8, CRC_OUT = 6'd9, LOAD_LANES = 6'd10,
                     CLEAR_ACC = 6'd11, SETUP = 6'd12, RUN = 6'd13, COUNT_A = 6'd14, COUNT_B = 6'd15,
                     SAVE_A = 6'd16, SAVE_W = 6'd17, SAVE_B = 6'd18, SAVE_ACC_A = 6'd19, SAVE_ACC_W = 6'd20,
                     SAVE_ACC_B = 6'd21, EMIT = 6'd22, COUNTERS_OUT = 6'd23, FINISH = 6'd24, FAIL = 6'd25,
                     READ = 6'd26, READ_TAKE = 6'd27, MULTIPLY = 6'd28, FETCH = 6'd29, LOAD_WRITE = 6'd30,
                     COUNTER_NEXT = 6'd31, SERIAL_CHECK = 6'd32, SERIAL_UPDATE = 6'd33;
    reg  [5:0]  state, resume, after_emit;
    // the request reader: `read_bytes` bytes at payload offset `read_at` into `value`, then `resume`;
    // `read_at` moves on a byte a byte, so a loop over the samples reads on where the last read ended
    reg  [RX_AW-1:0] read_at;
    reg  [3:0]       read_bytes, read_index;
    reg  [8*WB-1:0]  value;                // a sample (or P: WB ≥ 2)
    wire signed [8*WB-1:0] word = value;
    wire signed [63:0] sample = word;
    localparam signed [8*WB-1:0] BOUND = LIMIT[8*WB-1:0];
    // −BOUND ≤ word ≤ BOUND, as unsigned compares with the sign bit flipped (constant bounds: `above`)
    localparam [8*WB-1:0] SIGN = {1'b1, {(8 * WB - 1){1'b0}}};
    localparam [8*WB-1:0] HIGHEST = BOUND ^ SIGN, LOWEST = (-BOUND) ^ SIGN;      // LOWEST ≥ 1
    localparam [8*WB-1:0] BELOW_LOWEST = LOWEST - 1'b1;
    wire [8*WB-1:0] ordered = value ^ SIGN;
    wire        in_range = !above(ordered, HIGHEST) && above(ordered, BELOW_LOWEST);
    // loops: `index` counts; `inner`/`outer` split it where an address needs (row, column) without a divider
    reg  [CW-1:0] index, count, inner, outer, inner_limit;
    // (the request's fields hold while it executes: ef_frame_rx takes no frame until the engine lets it go)
    wire [SW-1:0] steps = f_u32_8[SW-1:0];  // K of a chunk (below 2^SW once CHECK passed it)
    reg  [3:0]  emit_index, emit_bytes;
    wire        ending     = (op == END_FORWARD || op == END_ECHO);
    // what EMIT sends: byte emit_index of a register (READ_STATE, READ_OBSERVABLES, a counter at END_*),
    // else of the program hash (bytes selected before the sources: an 8-bit multiplexer, not a 64-bit one)
    wire [7:0]  register_byte = rf_data[8 * emit_index[2:0] +: 8];
    wire [31:0] program_hash  = ~crc;
    wire [7:0]  emitted    = (op == READ_STATE || op == READ_OBSERVABLES || (ending && !counters_fresh))
                             ? register_byte : ending ? 8'd0 : program_hash[8 * emit_index[1:0] +: 8];
    reg  [TX_AW-1:0] emit_at;
    wire        main_tx_we = (state == EMIT);
`include "ef_crc32.vh"

    wire        loading     = (op == LOAD_PROGRAM);
    wire [15:0] program_p   = loading ? new_size : size;
    wire        is_echo_run = (op == ECHO_CHUNK);
    wire        zero_state  = fields[40];                     // BEGIN_* flags bit 0: ZERO_STATE
    reg  [KW-1:0] kp;                                         // K·P of a chunk: K added P times (MULTIPLY)
    reg  [PW-1:0] kp_bit;
    wire [PW+1:0] twice     = {size, 1'b0};                   // 2P (and room for 4P)

    // ---- the stream feeder: beats {q, f} from the request, in processing order (RUN) ----
    reg         feeding;
    reg  [SW-1:0] feed_left;                                  // rows (steps) still to feed, K down to 1
    reg  [PW-1:0] feed_osc;
    reg  [1:0]  feed_state;                                   // 0 f's bytes, 1 q's bytes, 2 offer the beat
    reg         feed_second;                                  // an echo beat was taken once (by the + lane):
                                                              // it is offered again, to the − lane (pair_beats)
    reg         feed_wait;                                    // the address of byte feed_index is presented
    reg  [3:0]  feed_index;
    reg  [8*WB-1:0] feed_f, feed_q;
    // Running pointers, a byte a byte: f's and q's next byte in the request. A forward run reads its f row by row
    // from offset 12 on; an echo runs its steps last first, so after each row both go back two rows (2P·WB
    // bytes). They start at the last row: q's ends the request (its length was checked), f's is K·P·WB before.
    reg  [RX_AW-1:0] feed_f_at, feed_q_at;
    wire [47:0] feed_row    = times({32'd0, size}, WB);
    wire [47:0] feed_q_last = {{(48 - RX_AW){1'b0}}, len} - feed_row;
    wire [RX_AW-1:0] feed_back = ~times({32'd0, twice}, WB) + 1'b1;       // −2P·WB
    wire        feed_row_end = feed_state == 2'd2 && feed_osc + 1'b1 == size;
    wire [RX_AW-1:0] feed_move = feed_row_end ? feed_back : {{(RX_AW - 1){1'b0}}, 1'b1};
    wire [47:0] feed_offset = feed_state[0] ? feed_q_at : feed_f_at;
    assign in_data = {feed_q[WORD_BITS-1:0], feed_f[WORD_BITS-1:0]};
    // ---- the stream collector: out beats to the response, at forward time indices ----
    reg         collecting;
    reg  [SW-1:0] out_left;                                   // rows still to collect
    reg  [PW-1:0] out_osc;
    reg  [3:0]  out_index;
    reg  [8*WOB-1:0] out_value;
    reg         out_busy;
    // the response byte written next, a running pointer: an echo's rows go back two rows (2P·WOB bytes) after
    // each, from the last row (the response's end, less a row)
    reg  [TX_AW-1:0] out_at;
    wire [3:0]  out_bytes   = is_echo_run ? WOB[3:0] : WB[3:0];
    wire [TX_AW-1:0] out_back = ~times({32'd0, twice}, WOB) + 1'b1;       // −2P·WOB
    wire [47:0] out_last    = response - times({32'd0, size}, WOB);
    wire        out_row_end = is_echo_run && out_osc + 1'b1 == size;
    wire [47:0] out_offset  = {{(48 - TX_AW){1'b0}}, out_at};
    assign out_ready = collecting && !out_busy;

    wire [47:0] read_address = feeding ? feed_offset : {{(48 - RX_AW){1'b0}}, read_at};
    assign rx_addr = read_address[RX_AW-1:0];
    assign tx_we   = main_tx_we || out_busy;
    assign tx_addr = out_busy ? out_offset[TX_AW-1:0] : emit_at;                 // emit_at moves on a byte a byte
    assign tx_data = out_busy ? out_value[8 * out_index +: 8] : emitted;

    // x · c for a constant c, as shifts and adds: no multiplier (the bank needs every DSP of a UP5K).
    function [47:0] times;
        input [47:0] x;
        input integer c;
        integer b;
        begin
            times = 48'd0;
            for (b = 0; b < 8; b = b + 1)
                if (c[b]) times = times + (x << b);
        end
    endfunction

    // The program image's header as LOAD_PROGRAM sends it: format 1, one bank, kind, formats, P.
    function [7:0] image_header;
        input [3:0]  at;
        input [15:0] p;
        case (at)
            4'd0, 4'd1: image_header = 8'd1;
            4'd11: image_header = p[7:0];
            4'd12: image_header = p[15:8];
            default: image_header = FORMAT_BYTES[8 * (at - 4'd2) +: 8];
        endcase
    endfunction

    assign hash_init = state == APPLY && index == count;     // the hash: fed by CRC_HEADER and CRC_BYTE
    assign hash_feed = !crc_busy && (state == CRC_HEADER || state == CRC_BYTE);
    assign hash_data = state == CRC_HEADER ? image_header(index[3:0], program_p) : value[7:0];

    task refuse;                           // answer the error `code`; nothing has changed
        input [15:0] code;
        begin
            error_code <= code;
            state      <= FAIL;
        end
    endtask
    task read;                             // `bytes` bytes at payload offset `at` into `value`, then `next`
        input [31:0] at;
        input [3:0]  bytes;
        input [5:0]  next;
        begin
            read_at    <= at[RX_AW-1:0];
            read_bytes <= bytes;
            read_index <= 4'd0;
            value      <= 64'd0;
            resume     <= next;
            state      <= READ_TAKE;       // the address is presented next clock, its byte the one after
        end
    endtask
    task read_next;                        // `bytes` bytes where the last read ended (the next sample)
        input [3:0]  bytes;
        input [5:0]  next;
        begin
            read_bytes <= bytes;
            read_index <= 4'd0;
            value      <= 64'd0;
            resume     <= next;
            state      <= READ_TAKE;
        end
    endtask
    task emit;                             // the low `bytes` bytes of `emitted`, then `next`: a command's
        input [3:0]  bytes;                // response is emitted in order from offset 0 (emit_at), so each
        input [5:0]  next;                 // emit goes where the last one ended (a register comes from rf_data,
        begin                              // which holds through EMIT)
            emit_bytes <= bytes;
            emit_index <= 4'd0;
            after_emit <= next;
            state      <= EMIT;
        end
    endtask
    task bus_write;
        input [CORE_AW-1:0] address;
        input [63:0]        data;
        begin
            reg_addr  <= address;
            reg_we    <= 1'b1;
            bus_data  <= data[BUS_BITS-1:0];
        end
    endtask
    task loop;                             // count `total` steps as (outer, inner < limit)
        input [31:0] total;
        input [31:0] limit;
        begin
            index       <= 32'd0;
            inner       <= 32'd0;
            outer       <= 32'd0;
            count       <= total;
            inner_limit <= limit;
        end
    endtask
    task step;
        begin
            index <= index + 32'd1;
            if (inner + 32'd1 == inner_limit) begin
                inner <= 32'd0;
                outer <= outer + 32'd1;
            end else inner <= inner + 32'd1;
        end
    endtask

    wire signed [63:0] zero = 64'sd0;
    // LOAD_LANES / SAVE_*: the loop runs over (outer: ϕ 0 or π 1, inner: the lane — 2p + σ in an echo, p forward)
    wire          lane_pi   = outer[0];

    // ---- CHECK: the command's rules, one a clock in the simulator's order (`index` numbers them). A rule
    // is a condition and the error it refuses with; every opcode draws on the same few terms below (one
    // adder or comparator each serves all), so the rules cost a multiplexer, not a comparator apiece.
    wire        is_begin    = (op == BEGIN_FORWARD || op == BEGIN_ECHO);
    wire        doubled     = (op == BEGIN_ECHO || op == END_ECHO
                               || (op == READ_STATE && field_byte(5) != 8'd0));   // 2 × 2P lanes
    wire [PW+2:0] lanes_of  = doubled ? twice << 1 : twice;                           // 2P, or 4P
    wire [15:0] request_p   = loading ? value[15:0] : {{(16 - PW){1'b0}}, size};      // the P a request is sized by
    // samples the request carries (kp is 0 but for chunks)
    wire [47:0] samples     = (loading || op == WRITE_PARAMS) ? times({32'd0, request_p}, 5)
                            : (op == WRITE_STATE) ? {{(46 - PW){1'b0}}, twice}
                            : is_echo_run ? {kp, 1'b0} : {1'b0, kp};
    wire [4:0]  header      = loading ? 5'd17 : (op == WRITE_PARAMS) ? 5'd5 : (op == WRITE_STATE) ? 5'd11
                            : (op == READ_STATE) ? 5'd10 : (op == READ_OBSERVABLES) ? 5'd9 : ending ? 5'd4 : 5'd12;
    wire        length_bad  = {16'd0, len} != {43'd0, header} + times(samples, WB);
    wire [47:0] acc_values  = times({32'd0, request_p}, ACC_ROWS);                    // (A, P) observables
    wire [47:0] response    = (op == READ_STATE) ? times({{(45 - PW){1'b0}}, lanes_of}, WB)
                            : (op == READ_OBSERVABLES) ? acc_values << 3 : is_echo_run ? times(kp, WOB) : times(kp, WB);
    wire [47:0] loop_total  = (op == READ_STATE || is_begin || ending) ? {{(45 - PW){1'b0}}, lanes_of}
                            : (op == READ_OBSERVABLES) ? acc_values : samples;
    // a range within the batch (or phase): first + count ≤ limit, count ≠ 0
    // (WRITE_STATE, READ_STATE, READ_OBSERVABLES: u16 fields; a chunk's range is the phase's, SERIAL_CHECK)
    wire [15:0] range_first = (op == WRITE_STATE) ? f_u16_7 : (op == READ_STATE) ? f_u16_6 : f_u16_5;
    wire [15:0] range_count = (op == WRITE_STATE) ? f_u16_9 : (op == READ_STATE) ? f_u16_8 : f_u16_7;
    wire [16:0] range_end   = {1'b0, range_first} + {1'b0, range_count};
    wire [16:0] range_limit = (op == WRITE_STATE) ? {1'b0, f_u16_5} : MAX_BATCH;
    wire        range_bad   = range_count == 16'd0 || range_end > range_limit;
    // The phase's rules, decided a bit a clock in SERIAL_CHECK (LSB first, both registers rotating): a forward
    // chunk starts at the position and start + K ≤ L (K ≠ 0: rule 1); an echo chunk ends at the position
    // (start + K, its carry 0); END_FORWARD at position = L, END_ECHO at 0.
    reg  [4:0]  serial_bit;
    reg         serial_carry, serial_same, serial_over;
    wire        start_bit   = f_u32_4[serial_bit];
    wire        length_bit  = f_u32_8[serial_bit];                  // K of a chunk, L of a BEGIN
    wire [1:0]  serial_sum  = {1'b0, start_bit} + {1'b0, length_bit} + {1'b0, serial_carry};
    wire        serial_x    = (op == FORWARD_CHUNK) ? start_bit : is_echo_run ? serial_sum[0]
                            : (op == END_FORWARD) ? phase_length[0] : 1'b0;
    wire        chunk_order_bad = is_echo_run ? !serial_same || serial_carry : !serial_same || serial_over || serial_carry;
    // what SERIAL_UPDATE shifts into the position: L at BEGIN_ECHO (0 forward), start + K after a forward
    // chunk, start after an echo chunk
    wire        serial_in   = is_begin ? doubled && length_bit : is_echo_run ? start_bit : serial_sum[0];
    wire [15:0] batch       = is_begin ? f_u16_6 : f_u16_5;                             // a batch size field
    wire        batch_bad   = batch == 16'd0 || above(batch, MAX_BATCH);
    wire        phase_bad   = phase != ((op == END_ECHO || is_echo_run) ? ECHO : FORWARD);
    reg         rule_broken, rule_last;
    reg  [15:0] rule_code;
    always @* begin
        {rule_broken, rule_code, rule_last} = {1'b1, 16'h0001, 1'b1};               // UNKNOWN_OPCODE
        case (op)
            LOAD_PROGRAM: case (index[2:0])                                        // `value` holds P
                3'd0: {rule_broken, rule_code, rule_last} = {!above(len, 5) || field_byte(4) != 8'd1 || field_byte(5) != 8'd1,
                                                             BAD_PROGRAM, 1'b0};
                3'd1: {rule_broken, rule_code, rule_last} = {!above(len, 16) || above(field_byte(6), 1) || request_p == 16'd0,
                                                             BAD_PROGRAM, 1'b0};
                3'd2: {rule_broken, rule_code, rule_last} = {fields[95:56] != FORMAT_BYTES[47:8] || !formats_tail, BAD_PROGRAM, 1'b0};
                3'd3: {rule_broken, rule_code, rule_last} = {length_bad, BAD_PROGRAM, 1'b0};
                3'd4: {rule_broken, rule_code, rule_last} = {above(request_p, MAX_OSCILLATORS), OVER_CAPACITY, 1'b0};
                default: {rule_broken, rule_code, rule_last} = {field_byte(6) != FORMAT_BYTES[7:0], BAD_PROGRAM, 1'b1};
            endcase
            WRITE_PARAMS: case (index[2:0])
                3'd0: {rule_broken, rule_code, rule_last} = {!loaded, NO_PROGRAM, 1'b0};
                3'd1: {rule_broken, rule_code, rule_last} = {f_bank != 8'd0, BAD_BANK, 1'b0};
                default: {rule_broken, rule_code, rule_last} = {length_bad, BAD_PAYLOAD, 1'b1};
            endcase
            WRITE_STATE: case (index[2:0])
                3'd0: {rule_broken, rule_code, rule_last} = {!loaded, NO_PROGRAM, 1'b0};
                3'd1: {rule_broken, rule_code, rule_last} = {f_bank != 8'd0, BAD_BANK, 1'b0};
                3'd2: {rule_broken, rule_code, rule_last} = {batch_bad, OVER_CAPACITY, 1'b0};
                3'd3: {rule_broken, rule_code, rule_last} = {range_bad, BAD_PAYLOAD, 1'b0};
                default: {rule_broken, rule_code, rule_last} = {length_bad, BAD_PAYLOAD, 1'b1};
            endcase
            READ_STATE: case (index[2:0])
                3'd0: {rule_broken, rule_code, rule_last} = {length_bad, BAD_PAYLOAD, 1'b0};
                3'd1: {rule_broken, rule_code, rule_last} = {!loaded, NO_PROGRAM, 1'b0};
                3'd2: {rule_broken, rule_code, rule_last} = {f_bank != 8'd0, BAD_BANK, 1'b0};
                3'd3: {rule_broken, rule_code, rule_last} = {above(field_byte(5), 1), BAD_PAYLOAD, 1'b0};
                3'd4: {rule_broken, rule_code, rule_last} = {doubled ? !echo_valid : !state_valid, NO_STATE, 1'b0};
                3'd5: {rule_broken, rule_code, rule_last} = {range_bad, BAD_PAYLOAD, 1'b0};
                default: {rule_broken, rule_code, rule_last} = {above(response, MAX_RESPONSE), RESPONSE_TOO_LARGE, 1'b1};
            endcase
            BEGIN_FORWARD, BEGIN_ECHO: case (index[2:0])
                3'd0: {rule_broken, rule_code, rule_last} = {length_bad, BAD_PAYLOAD, 1'b0};
                3'd1: {rule_broken, rule_code, rule_last} = {!loaded, NO_PROGRAM, 1'b0};
                3'd2: {rule_broken, rule_code, rule_last} = {f_bank != 8'd0, BAD_BANK, 1'b0};
                3'd3: {rule_broken, rule_code, rule_last} = {doubled && f_u32_8 == 32'd0, BAD_PAYLOAD, 1'b0};
                3'd4: {rule_broken, rule_code, rule_last} = {fields[47:41] != 7'd0, BAD_PAYLOAD, 1'b0};  // undefined flags
                3'd5: {rule_broken, rule_code, rule_last} = {batch_bad, OVER_CAPACITY, 1'b0};
                default: {rule_broken, rule_code, rule_last} = {!zero_state && !state_valid, NO_STATE, 1'b1};
            endcase
            FORWARD_CHUNK, ECHO_CHUNK: case (index[2:0])                            // `kp` holds K · P
                3'd0: {rule_broken, rule_code, rule_last} = {phase_bad, NO_PHASE, 1'b0};
                3'd1: {rule_broken, rule_code, rule_last} = {f_u32_8 == 32'd0 || above(f_u32_8, MAX_CHUNK_STEPS)
                                                             || above(samples, BUFFER_SAMPLES), OVER_CAPACITY, 1'b0};
                3'd2: {rule_broken, rule_code, rule_last} = {above(response, MAX_RESPONSE), RESPONSE_TOO_LARGE, 1'b0};
                3'd3: {rule_broken, rule_code, rule_last} = {chunk_order_bad, OUT_OF_ORDER, 1'b0};
                default: {rule_broken, rule_code, rule_last} = {length_bad, BAD_PAYLOAD, 1'b1};
            endcase
            END_FORWARD, END_ECHO: case (index[2:0])
                3'd0: {rule_broken, rule_code, rule_last} = {length_bad, BAD_PAYLOAD, 1'b0};
                3'd1: {rule_broken, rule_code, rule_last} = {phase_bad, NO_PHASE, 1'b0};
                default: {rule_broken, rule_code, rule_last} = {!serial_same, OUT_OF_ORDER, 1'b1};
            endcase
            READ_OBSERVABLES: case (index[2:0])
                3'd0: {rule_broken, rule_code, rule_last} = {length_bad, BAD_PAYLOAD, 1'b0};
                3'd1: {rule_broken, rule_code, rule_last} = {!loaded, NO_PROGRAM, 1'b0};
                3'd2: {rule_broken, rule_code, rule_last} = {f_bank != 8'd0, BAD_BANK, 1'b0};
                3'd3: {rule_broken, rule_code, rule_last} = {!echo_valid, NO_STATE, 1'b0};
                3'd4: {rule_broken, rule_code, rule_last} = {range_bad, BAD_PAYLOAD, 1'b0};
                default: {rule_broken, rule_code, rule_last} = {above(response, MAX_RESPONSE), RESPONSE_TOO_LARGE, 1'b1};
            endcase
            default: ;
        endcase
    end

    // ---- the register file's ports ----
    // (Addresses as ORs where the fields cannot overlap — a p below PMAX, a row below 8, an offset below its
    // aligned base — so that they cost no adder.)
    wire [RF_AW-1:0] state_register = (lane_pi ? PMAX_AT : {RF_AW{1'b0}})
                                      | (phase == ECHO ? inner >> 1 : inner);           // STATE ϕ or π of a lane
    wire [RF_AW-1:0] echo_register  = (lane_pi ? 2 * PMAX_AT : {RF_AW{1'b0}}) | (inner[0] ? PMAX_AT : {RF_AW{1'b0}})
                                      | (inner >> 1);                                   // lane 2p + σ → σ·PMAX + p
    wire signed [WORD_BITS:0]   minus_pi    = -$signed(rf_data[WORD_BITS:0]);  // −π of a STATE register: W + 1 bits
    wire [32:0] counter_sum = {1'b0, counters_fresh ? 32'd0 : rf_data[31:0]} + {1'b0, reg_rdata[31:0]};
    wire [RF_AW-1:0] counter_register = COUNTERS_AT | index[1:0];
    assign rf_read_at  = (state == LOAD_LANES) ? STATE_AT | state_register
                       : (op == READ_OBSERVABLES) ? (inner << 3) | outer[2:0]
                       : (op == READ_STATE) ? ((field_byte(5) == 8'd0 ? STATE_AT : ECHO_AT) + outer[1:0] * PMAX_AT) | inner
                       : counter_register;                                       // chunks (COUNT_*), END_*
    assign rf_we       = (state == APPLY_NEXT && op == WRITE_STATE) || state == SAVE_B || state == SAVE_ACC_B
                         || state == COUNT_B;
    assign rf_write_at = (state == APPLY_NEXT) ? STATE_AT | (outer[0] ? PMAX_AT : {RF_AW{1'b0}}) | inner
                       : (state == SAVE_ACC_B) ? (outer << 3) | inner[2:0]
                       : (state == COUNT_B) ? counter_register
                       : (phase == ECHO) ? ECHO_AT + echo_register : STATE_AT | state_register;
    // What is ever read of a register: an accumulator all 64 bits (written from the bus only), a counter its
    // low 32, STATE and ECHO ϕ/π their low READ_BITS (READ_STATE's WB bytes, LOAD_LANES's bus word and −π).
    // So WRITE_STATE's sample and a counter fill only those bits; the rest take the bus's (read nowhere).
    localparam integer READ_BITS = 8 * WB > BUS_BITS ? 8 * WB : BUS_BITS;
    localparam [63:0]  SAMPLE_BITS = (64'd1 << READ_BITS) - 64'd1;
    assign rf_wdata    = (state == APPLY_NEXT) ? (sample & SAMPLE_BITS) | (reg_rdata & ~SAMPLE_BITS)  // sign-extended
                       : (state == COUNT_B) ? {reg_rdata[63:32], counter_sum[32] ? 32'hFFFFFFFF : counter_sum[31:0]}
                       : reg_rdata;                                                                  // (saturating)
    always @(posedge clk) begin
        if (rf_we) registers[rf_write_at] <= rf_wdata;
        rf_data <= registers[rf_read_at];
    end
    integer k;
    always @(posedge clk) begin
        done   <= 1'b0;
        reg_we <= 1'b0;
        if (rst || clear) begin
            state       <= IDLE;
            loaded      <= 1'b0;
            state_valid <= 1'b0;
            echo_valid  <= 1'b0;
            phase       <= NONE;
        end else case (state)
            IDLE: if (start) begin
                failed          <= 1'b0;
                response_length <= 32'd0;
                emit_at         <= {TX_AW{1'b0}};                    // the response from offset 0
                loop(32'd0, 32'd1);
                kp     <= {KW{1'b0}};
                kp_bit <= {PW{1'b0}};
                if (op == LOAD_PROGRAM) read(32'd15, 4'd2, CHECK);  // P, beyond the captured fields
                else state <= (op == FORWARD_CHUNK || op == ECHO_CHUNK || ending) ? SERIAL_CHECK : CHECK;
                serial_bit   <= 5'd0;
                serial_carry <= 1'b0;
                serial_same  <= 1'b1;
                serial_over  <= 1'b0;
            end
            MULTIPLY:                                                   // kp = K · P: P ≤ PMAX clocks, no shifter
                if (kp_bit == size) state <= CHECK;
                else begin
                    kp     <= kp + steps;
                    kp_bit <= kp_bit + 1'b1;
                end
            CHECK: begin
                if (loading) new_size <= value[15:0];                   // `value` holds P
                if (rule_broken) refuse(rule_code);
                else if (!rule_last) index <= index + 32'd1;
                else begin                                              // every rule holds: accepted
                    loop(loop_total, (is_begin || ending) ? (doubled ? {30'd0, twice} : {16'd0, size})
                                     : (op == FORWARD_CHUNK || is_echo_run) ? 32'd1 : {16'd0, request_p});
                    read_at <= {{(RX_AW - 5){1'b0}}, header};
                    if (op == READ_STATE || op == READ_OBSERVABLES) response_length <= response;
                    if (is_begin) begin
                        phase          <= doubled ? ECHO : FORWARD;
                        counters_fresh <= 1'b1;
                    end
                    state <= (op == READ_STATE || op == READ_OBSERVABLES) ? APPLY : is_begin ? SERIAL_UPDATE
                           : ending ? SAVE_A : RANGE;
                end
            end
            // ---- every sample of the request within range, before anything changes ----
            RANGE: if (index == count) begin
                loop(count, {16'd0, program_p});
                read_at <= {{(RX_AW - 5){1'b0}}, header};                // APPLY reads them again
                state <= APPLY;
            end else read_next(WB[3:0], RANGE_NEXT);
            RANGE_NEXT:
                if (!in_range)
                    refuse((op == LOAD_PROGRAM || op == WRITE_PARAMS) ? BAD_PROGRAM : BAD_PAYLOAD);
                else if (KIND == 1 && (op == LOAD_PROGRAM || op == WRITE_PARAMS)
                         && outer == 32'd2 && word == 0)
                    refuse(BAD_PROGRAM);                                 // a nonlinear bank's w = 0
                else begin
                    step;
                    state <= RANGE;
                end
            // ---- execute ----
            APPLY: case (op)
                LOAD_PROGRAM, WRITE_PARAMS:
                    if (index == count) begin
                        index <= 32'd0;
                        state <= CRC_HEADER;               // the hash starts over (ef_crc32's init)
                    end else read_next(WB[3:0], APPLY_NEXT);
                WRITE_STATE:
                    if (index == count) begin
                        state_valid <= 1'b1;
                        state       <= FINISH;
                    end else read_next(WB[3:0], APPLY_NEXT);
                READ_STATE:                                              // STATE ϕ, π; ECHO ϕ (2, P), π (2, P)
                    state <= (index == count) ? FINISH : FETCH;        // the register at rf_read_at
                READ_OBSERVABLES:                                        // (A, P): outer the row, inner p
                    state <= (index == count) ? FINISH : FETCH;
                FORWARD_CHUNK, ECHO_CHUNK: begin
                    index <= 32'd0;
                    state <= SETUP;
                end
                default: state <= FINISH;
            endcase
            FETCH:                                                      // rf_data: the register to send
                if (op == READ_STATE) emit(WB[3:0], APPLY_NEXT);
                else if (op == READ_OBSERVABLES) emit(4'd8, APPLY_NEXT);
                else emit(4'd4, COUNTER_NEXT);                              // END_*: counter `index`
            APPLY_NEXT: begin
                step;
                state <= APPLY;
                if (op == LOAD_PROGRAM || op == WRITE_PARAMS)    // codes (5, P): outer the field, inner p
                    bus_write(PARAMS_BASE | (inner << 3) | outer[2:0], sample);
            end
            // ---- the program hash: CRC-32 of the image header and the codes ----
            CRC_HEADER: if (!crc_busy) begin                           // the header byte goes into the hash
                index <= index + 32'd1;
                if (index == 32'd12) begin
                    read_at <= {{(RX_AW - 5){1'b0}}, header};   // the codes
                    state   <= CRC_BODY;
                end
            end
            CRC_BODY: if (read_at == len) state <= CRC_OUT;
                      else read_next(4'd1, CRC_BYTE);
            CRC_BYTE: if (!crc_busy) state <= CRC_BODY;                // the byte read goes into the hash
            CRC_OUT: if (!crc_busy) begin
                loaded          <= 1'b1;
                size            <= program_p;
                phase           <= NONE;
                response_length <= 32'd4;
                if (loading) begin
                    state_valid <= 1'b0;
                    echo_valid  <= 1'b0;
                end
                emit(4'd4, FINISH);                                     // ~crc (emitted)
            end
            // ---- a phase's start: the lanes from the STATE register (or zero); an echo's accumulators 0 ----
            LOAD_LANES: if (index == count) begin
                loop(times({32'd0, size}, ACC_ROWS), ACC_ROWS);          // outer p, inner the core's row
                state <= (phase == ECHO) ? CLEAR_ACC : FINISH;
            end else state <= LOAD_WRITE;                            // ϕ lanes, then π lanes
            LOAD_WRITE: begin                                        // rf_data: the lane's STATE register
                bus_write((lane_pi ? PI_BASE : PHI_BASE) | inner,      // both echoes start at (ϕ, −π)
                          zero_state ? zero : (phase == ECHO && lane_pi)
                                              ? {{(63 - WORD_BITS){minus_pi[WORD_BITS]}}, minus_pi} : rf_data);
                step;
                state <= LOAD_LANES;
            end
            CLEAR_ACC: if (index == count) state <= FINISH;
                       else begin
                           bus_write(ACC_BASE | (outer << 3) | inner[2:0], zero);
                           step;
                       end
            // ---- a chunk: settings, START, the streams, the counters ----
            SETUP: begin
                index <= index + 32'd1;
                case (index[2:0])
                    3'd0: bus_write(CONTROL_BASE + R_MODE, {63'd0, is_echo_run});
                    3'd1: bus_write(CONTROL_BASE + R_FLIP, 64'd0);      // the lanes hold −π already
                    3'd2: bus_write(CONTROL_BASE + R_OSCILLATORS, {48'd0, size});
                    3'd3: bus_write(CONTROL_BASE + R_LANES, {32'd0, is_echo_run ? twice : {16'd0, size}});
                    3'd4: bus_write(CONTROL_BASE + R_STEPS, {32'd0, steps});
                    default: begin
                        bus_write(CONTROL_BASE + R_START, 64'd1);
                        state <= RUN;
                    end
                endcase
            end
            RUN: if (!feeding && !collecting && !core_busy) begin
                index    <= 32'd0;
                reg_addr <= CONTROL_BASE + R_COUNTER_STATE;
                state    <= COUNT_A;
            end
            COUNT_A: state <= COUNT_B;                                  // the counter arrives next clock
            COUNT_B: begin
                index <= index + 32'd1;                                 // the sum into counter `index` (rf_we)
                if (index == 32'd3) begin
                    counters_fresh  <= 1'b0;
                    response_length <= response;
                    serial_carry    <= 1'b0;
                    state           <= SERIAL_UPDATE;                   // the position after the chunk
                end else begin
                    reg_addr <= CONTROL_BASE + R_COUNTER_STATE + index[1:0] + 1'b1;
                    state    <= COUNT_A;
                end
            end
            // ---- a phase's end: the lanes (and accumulators) into the registers ----
            SAVE_A: if (index == count) begin
                loop(times({32'd0, size}, ACC_ROWS), ACC_ROWS);
                state <= (phase == ECHO) ? SAVE_ACC_A : COUNTERS_OUT;
                if (phase != ECHO) index <= 32'd0;
            end else begin
                reg_addr <= (lane_pi ? PI_BASE : PHI_BASE) | inner;
                state    <= SAVE_W;
            end
            SAVE_W: state <= SAVE_B;
            SAVE_B: begin                                                // the lane into its register (rf_we)
                step;
                state <= SAVE_A;
            end
            SAVE_ACC_A: if (index == count) begin                       // outer p, inner the response row
                index <= 32'd0;
                state <= COUNTERS_OUT;
            end else begin
                reg_addr <= ACC_BASE | (outer << 3) | acc_row(inner[2:0]);
                state    <= SAVE_ACC_W;
            end
            SAVE_ACC_W: state <= SAVE_ACC_B;
            SAVE_ACC_B: begin
                step;
                state <= SAVE_ACC_A;
            end
            COUNTERS_OUT: begin
                phase <= NONE;
                if (op == END_ECHO) echo_valid <= 1'b1; else state_valid <= 1'b1;
                response_length <= 32'd16;
                state <= (index == 32'd4) ? FINISH : FETCH;             // counter `index` at rf_read_at
            end
            COUNTER_NEXT: begin
                index <= index + 32'd1;
                state <= COUNTERS_OUT;
            end
            // ---- the phase's length and position, a bit a clock (serial_bit wraps to 0 at the end) ----
            SERIAL_CHECK: begin
                position     <= {position[0], position[31:1]};
                phase_length <= {phase_length[0], phase_length[31:1]};
                serial_carry <= serial_sum[1];
                serial_same  <= serial_same && serial_x == position[0];
                if (serial_sum[0] != phase_length[0]) serial_over <= serial_sum[0];   // start + K > L so far
                serial_bit   <= serial_bit + 1'b1;
                if (&serial_bit) state <= ending ? CHECK : MULTIPLY;
            end
            SERIAL_UPDATE: begin
                position     <= {serial_in, position[31:1]};
                phase_length <= {is_begin ? length_bit : phase_length[0], phase_length[31:1]};
                serial_carry <= serial_sum[1];
                serial_bit   <= serial_bit + 1'b1;
                if (&serial_bit) state <= is_begin ? LOAD_LANES : FINISH;
            end
            // ---- sub-steps ----
            READ_TAKE: state <= READ;
            READ: begin
                for (k = 0; k < WB; k = k + 1)                         // constant selects: no shifter
                    if (read_index == k) value[8 * k +: 8] <= rx_data;
                read_at <= read_at + 1'b1;
                if (read_index + 4'd1 == read_bytes) state <= resume;
                else begin
                    read_index <= read_index + 4'd1;
                    state      <= READ_TAKE;
                end
            end
            EMIT: begin                                                 // main_tx_we writes byte emit_index
                emit_at <= emit_at + 1'b1;
                if (emit_index + 4'd1 == emit_bytes) state <= after_emit;
                else emit_index <= emit_index + 4'd1;
            end
            FINISH: begin
                done  <= 1'b1;
                state <= IDLE;
            end
            FAIL: begin
                done   <= 1'b1;
                failed <= 1'b1;
                state  <= IDLE;
            end
            default: state <= IDLE;
        endcase
    end

    // ---- the feeder: from START to the last beat ----
    always @(posedge clk) begin
        if (rst || clear) begin
            feeding  <= 1'b0;
            in_valid <= 1'b0;
        end else if (state == SETUP && index[2:0] == 3'd5) begin
            feeding    <= 1'b1;
            feed_left  <= steps;
            feed_osc   <= 32'd0;
            feed_q_at  <= feed_q_last[RX_AW-1:0];
            feed_f_at  <= is_echo_run ? feed_q_last[RX_AW-1:0] - times(kp, WB) : 12;
            feed_state <= 2'd0;
            feed_index <= 4'd0;
            feed_wait  <= 1'b0;
            feed_second <= 1'b0;
        end else if (feeding) begin
            if (feed_state != 2'd2) begin
                feed_wait <= !feed_wait;                             // a byte: present its address, then take it
                if (feed_wait) begin
                    if (feed_state == 2'd0) feed_f <= {rx_data, feed_f[8*WB-1:8]};   // byte 0 ends lowest
                    else feed_q <= {rx_data, feed_q[8*WB-1:8]};
                    if (feed_state == 2'd0) feed_f_at <= feed_f_at + feed_move;
                    else feed_q_at <= feed_q_at + feed_move;
                    if (feed_index + 4'd1 != WB[3:0]) feed_index <= feed_index + 4'd1;
                    else begin
                        feed_index <= 4'd0;
                        if (feed_state == 2'd0 && is_echo_run) feed_state <= 2'd1;
                        else begin
                            feed_state <= 2'd2;
                            in_valid   <= 1'b1;
                        end
                    end
                end
            end else if (in_ready && is_echo_run && !feed_second) begin
                feed_second <= 1'b1;                                 // the + lane took it; the − lane takes it next
            end else if (in_ready) begin                             // the core takes the beat this clock
                feed_second <= 1'b0;
                in_valid   <= 1'b0;
                feed_state <= 2'd0;
                if (feed_osc + 32'd1 != {16'd0, size}) feed_osc <= feed_osc + 32'd1;
                else begin
                    feed_osc  <= 32'd0;
                    feed_left <= feed_left - 1'b1;
                    if (is_echo_run) begin
                        feed_f_at <= feed_f_at + feed_move;
                        feed_q_at <= feed_q_at + feed_move;
                    end
                    if (feed_left == 1'b1) feeding <= 1'b0;
                end
            end
        end
    end

    // ---- the collector: from START to the last out beat ----
    always @(posedge clk) begin
        if (rst || clear) begin
            collecting <= 1'b0;
            out_busy   <= 1'b0;
        end else if (state == SETUP && index[2:0] == 3'd5) begin
            collecting <= 1'b1;
            out_left   <= steps;
            out_osc    <= 32'd0;
            out_at     <= is_echo_run ? out_last[TX_AW-1:0] : {TX_AW{1'b0}};
            out_busy   <= 1'b0;
        end else if (collecting) begin
            if (!out_busy) begin
                if (out_valid) begin                                 // taken this clock (out_ready is high)
                    out_value <= {{(63 - WORD_BITS){out_data[WORD_BITS]}}, out_data};
                    out_index <= 4'd0;
                    out_busy  <= 1'b1;
                end
            end else if (out_index + 4'd1 != out_bytes) begin
                out_index <= out_index + 4'd1;
                out_at    <= out_at + 1'b1;
            end else begin
                out_busy <= 1'b0;
                out_at   <= out_at + (out_row_end ? out_back + 1'b1 : {{(TX_AW - 1){1'b0}}, 1'b1});
                if (out_osc + 32'd1 != {16'd0, size}) out_osc <= out_osc + 32'd1;
                else begin
                    out_osc  <= 32'd0;
                    out_left <= out_left - 1'b1;
                    if (out_left == 1'b1) collecting <= 1'b0;
                end
            end
        end
    end
endmodule
`default_nettype wire
