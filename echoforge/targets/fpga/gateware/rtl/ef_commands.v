// The core commands of docs/protocol.md §10.5–10.8 on the generated oscillator bank (echoforge_bank):
// LOAD_PROGRAM, WRITE_PARAMS, WRITE_STATE, READ_STATE, BEGIN/END_FORWARD, FORWARD_CHUNK, BEGIN/END_ECHO,
// ECHO_CHUNK, READ_OBSERVABLES. The image declares one bank, batch 1 (HELLO), so a chunk's (B, K, P)
// arrays are (K, P): the core's stream order. The engine (ef_engine) has checked the opcode, the length
// of the epoch and fixed fields and the epoch; this module checks the command's own rules in the
// simulator's order, reads the whole request (a range pass over every sample) before it changes
// anything, executes, writes the response payload into the transmit buffer and reports its length,
// or an error code.
//
// A small sequencer does it: the commands are a program (echoforge.targets.fpga.gateware.microcode,
// generated into ef_microcode.vh, one block-RAM ROM) for a machine with one 32-bit adder, an accumulator
// and the board's registers as its data memory. Its checks, sizes and loops cost program words instead
// of a comparator, multiplier or counter apiece; what stays in logic is what moves data at the stream's
// rate: the feeder (request samples to the bank's lanes) and the collector (out beats to the response).
//
// The board's registers live here (STATE: ϕ, π per oscillator; ECHO: both echoes' ϕ, π and the
// accumulators; the phase's counters; the program's variables and wide constants), in one block RAM
// (`registers`); the core's lane memories are the active phase's working state: BEGIN_* loads them,
// END_* copies them back, so a phase changes the registers only when it completes (§10.1).
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
    input  wire [31:0]      length,         // payload bytes (the epoch included; the program reads the rest)
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
`include "ef_microcode.vh"
    // ---- the command: its table entry in the program (0: none of these) ----
    reg  [3:0] op;
    always @* begin
        case (opcode)
            16'h0010: op = 4'd1;    // LOAD_PROGRAM
            16'h0011: op = 4'd2;    // WRITE_PARAMS
            16'h0012: op = 4'd3;    // WRITE_STATE
            16'h0013: op = 4'd4;    // READ_STATE
            16'h0020: op = 4'd5;    // BEGIN_FORWARD
            16'h0021: op = 4'd6;    // FORWARD_CHUNK
            16'h0022: op = 4'd7;    // END_FORWARD
            16'h0030: op = 4'd8;    // BEGIN_ECHO
            16'h0031: op = 4'd9;    // ECHO_CHUNK
            16'h0032: op = 4'd10;   // END_ECHO
            16'h0033: op = 4'd11;   // READ_OBSERVABLES
            default:  op = 4'd0;
        endcase
    end

    localparam integer PW = $clog2(PMAX) + 1;                      // P ≤ PMAX
    localparam integer SW = $clog2(MAX_CHUNK_STEPS) + 1;           // K ≤ MAX_CHUNK_STEPS
    wire [RX_AW-1:0] len = length[RX_AW-1:0];                      // ≤ MAX_REQ < 2^RX_AW (ef_frame_rx)

    // ---- the instruction: 5-bit operation, 3-bit mode, 16-bit immediate (MC_* in ef_microcode.vh) ----
    reg  [MC_PCW-1:0] pc, pc_next, link;
    reg  [23:0]       instr;
    wire [4:0]        i_op  = instr[23:19];
    wire [2:0]        i_md  = instr[18:16];
    wire [15:0]       i_imm = instr[15:0];
    wire [MC_PCW-1:0] target = i_imm[MC_PCW-1:0];

    // ---- the machine's state ----
    localparam [3:0] IDLE = 4'd0, DECODE = 4'd1, EXEC = 4'd2, RD_ADDR = 4'd3, RD_TAKE = 4'd4, RD_EXT = 4'd5,
                     EMIT = 4'd6, SV_WAIT = 4'd7, SV_WRITE = 4'd8, HASH = 4'd9, RUN = 4'd10, MULTIPLY = 4'd11;
    reg  [3:0]        st;
    reg  [31:0]       A;
    reg               zero_flag, carry_flag;
    reg  [7:0]        X, Y;                 // register-file and bank indices, ORed into an instruction's base
    reg  [15:0]       C;                    // LOOP's count
    reg  [RX_AW-1:0]  RP;                   // the request byte RD reads next
    reg  [TX_AW-1:0]  EP;                   // the response byte EM writes next: responses go in order from 0
    reg  [2:0]        nth;                  // RD's and EM's byte
    reg  [7:0]        mul_left;             // MUL's additions still to do
    reg  [PW-1:0]     size;                 // P of the loaded program
    // The board's flags: loaded, STATE and ECHO valid, the phase (forward, echo); and E, the command is the
    // echo's (BEGIN_ECHO, ECHO_CHUNK, END_ECHO: the feeder's and collector's mode too), as JF and FAIL see them.
    reg  [4:0]        F;
    wire              is_echo_run = op == 4'd8 || op == 4'd9 || op == 4'd10;
    wire [6:0]        flags = {1'b0, is_echo_run, F};
    reg               feeding, collecting;  // a chunk's streams (RUN)

    // ---- the oscillator bank ----
    reg  [CORE_AW-1:0]  reg_addr;
    reg                 reg_we;
    // Everything the program writes is a W-bit sample or lane (−π: W + 1 bits), 0, or a control value
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

    // ---- the registers (data memory): accumulators, STATE, ECHO, counters, variables, constants ----
    (* no_rw_check *) reg [63:0] registers [0:MC_RF_WORDS - 1];
    initial begin
        `MC_CONSTANTS
    end
    reg  [63:0]       rf_data;
    wire              is_check = i_op == MC_CHK;      // its mode is a condition, its register unindexed
    wire [MC_RF_AW-1:0] rf_at = i_imm[MC_RF_AW-1:0] | (i_md[1] && !is_check ? X[MC_RF_AW-1:0] : {MC_RF_AW{1'b0}});
    wire              rf_we = (st == EXEC && i_op == MC_ST) || st == SV_WRITE;
    // an ST's word sign-extended; a bank word (SV) as read back
    wire [63:0]       rf_wdata = (st == SV_WRITE) ? reg_rdata : {{32{A[31]}}, A};
    always @(posedge clk) begin
        if (rf_we) registers[rf_at] <= rf_wdata;
        rf_data <= registers[rf_at];
    end

    // ---- the adder: ADD, SUB, CMP, CHK (carry: ADD's carry out, a compare's borrow) ----
    // An operand is a register (mode bit 0), else by mode bits 2:1 the immediate, the request's length or P;
    // CHK's is a 10-bit immediate, a register or the length (imm[11:10]).
    wire [1:0]  source   = is_check ? {i_imm[11], 1'b0} : i_md[2:1];
    wire [31:0] operand  = (is_check ? i_imm[10] : i_md[0]) ? rf_data[31:0]
                         : (source == 2'b10) ? {{(32 - RX_AW){1'b0}}, len}
                         : (source == 2'b11) ? {{(32 - PW){1'b0}}, size}
                         : {16'd0, is_check ? {6'd0, i_imm[9:0]} : i_imm};
    wire        subtract = i_op == MC_SUB || i_op == MC_CMP || is_check;
    wire [32:0] total    = {1'b0, A} + {1'b0, operand ^ {32{subtract}}} + {32'd0, subtract};
    wire [31:0] result   = (i_op == MC_LD) ? operand : (i_op == MC_AND) ? (A & operand) : total[31:0];
    wire        result_zero  = result == 32'd0;
    wire        result_carry = total[32] ^ subtract;
    wire        sets_flags = i_op == MC_ADD || subtract || i_op == MC_AND;
    wire        writes_a   = i_op == MC_LD || i_op == MC_ADD || i_op == MC_SUB || i_op == MC_AND;
    wire        zero  = is_check ? result_zero : zero_flag;     // CHK decides on its own compare
    wire        carry = is_check ? result_carry : carry_flag;
    reg         holds;
    always @* case (i_md)                    // J's, FAIL's and CHK's condition
        3'd0: holds = 1'b1;
        3'd1: holds = zero;                             // =
        3'd2: holds = !zero;                            // ≠
        3'd3: holds = carry;                            // < (after a compare), a carry (after ADD)
        3'd4: holds = !carry;                           // ≥, no carry
        3'd5: holds = carry || zero;                    // ≤
        3'd6: holds = !carry && !zero;                  // >
        default: holds = !(|(flags & i_imm[15:9]));     // FAIL: the flag is clear
    endcase
    wire        flag_test = |(flags & i_imm[15:9]) == i_md[0];               // JF: a flag set (1) or clear (0)
    wire        moves_to = st == EXEC && i_op == MC_MOV;
    wire        run_start = st == EXEC && i_op == MC_RUN;
    wire        a_byte_fill = i_imm[3] && A[31];                              // RD's sign extension

    // ---- the program counter: the ROM is read at pc_next, so `instr` is always the word at `pc` ----
    wire        last_byte = nth + 3'd1 == i_imm[2:0];
    wire        emit_last = {1'b0, nth} + 4'd1 == i_imm[11:8];
    wire        run_over  = !feeding && !collecting && !core_busy;
    always @* begin
        pc_next = pc;
        if (st == IDLE) pc_next = {MC_PCW{1'b0}};
        else if (st == EXEC) case (i_op)
            MC_J:    pc_next = holds ? target : pc + 1'b1;
            MC_JF:   pc_next = flag_test ? target : pc + 1'b1;
            MC_CALL: pc_next = target;
            MC_RET:  pc_next = link;
            MC_JOP:  pc_next = target + op;
            MC_LOOP: pc_next = (C != 16'd1) ? target : pc + 1'b1;
            MC_FAIL, MC_CHK: pc_next = holds ? pc : pc + 1'b1;
            MC_HASH: pc_next = i_md[1] ? pc + 1'b1 : pc;
            MC_RD, MC_EM, MC_SV, MC_RUN, MC_DONE, MC_MUL: pc_next = pc;
            default: pc_next = pc + 1'b1;
        endcase
        else if ((st == RD_TAKE && last_byte && i_imm[2:0] == 3'd4) || (st == RD_EXT && nth == 3'd3)
                 || (st == EMIT && emit_last) || st == SV_WRITE || (st == HASH && !crc_busy)
                 || (st == RUN && run_over) || (st == MULTIPLY && mul_left == 8'd0))
            pc_next = pc + 1'b1;
    end
    always @(posedge clk) begin
        pc    <= pc_next;
        instr <= microcode(pc_next);
    end

    // ---- the response: EM's bytes, or the collector's out beats while a chunk runs ----
    reg  [SW-1:0]    out_left;
    reg  [PW-1:0]    out_osc;
    reg  [2:0]       out_index;
    reg  [8*WOB-1:0] out_value;
    reg              out_busy;
    reg  [TX_AW-1:0] out_at, out_back;     // out_back: −2P·WOB, an echo's step back after a row
    wire [7:0]       emitted = i_md[0] ? rf_data[8 * nth +: 8] : A[8 * nth[1:0] +: 8];
    assign tx_we   = st == EMIT || out_busy;
    assign tx_addr = out_busy ? out_at : EP;
    assign tx_data = out_busy ? out_value[8 * out_index +: 8] : emitted;

    assign hash_init = st == EXEC && i_op == MC_HASH && i_md[1];
    assign hash_feed = st == HASH && !crc_busy;
    assign hash_data = i_md[0] ? i_imm[7:0] : A[7:0];

    always @(posedge clk) begin
        done   <= 1'b0;
        reg_we <= 1'b0;
        if (rst || clear) begin
            st <= IDLE;
            F  <= 5'd0;
        end else case (st)
            IDLE: if (start) begin
                failed          <= 1'b0;
                response_length <= 32'd0;
                EP              <= {TX_AW{1'b0}};
                st              <= DECODE;
            end
            DECODE: st <= EXEC;                  // the register at rf_at arrives
            EXEC: begin
                st <= DECODE;
                if (writes_a) A <= result;
                if (sets_flags) begin
                    zero_flag  <= result_zero;
                    carry_flag <= result_carry;
                end
                if (i_md[2] && ((i_md[0] && (writes_a || i_op == MC_CMP)) || i_op == MC_ST)) X <= X + 1'b1;
                case (i_op)
                    MC_CALL: link <= pc + 1'b1;
                    MC_FAIL, MC_CHK: if (holds) begin
                        error_code <= mc_error(is_check ? i_imm[15:12] : i_imm[3:0]);
                        failed     <= 1'b1;
                        done       <= 1'b1;
                        st         <= IDLE;
                    end else st <= DECODE;
                    MC_DONE: begin
                        done <= 1'b1;
                        st   <= IDLE;
                    end
                    MC_LOOP: C <= C - 1'b1;
                    MC_RD: begin
                        if (i_md[0]) RP <= i_imm[4 +: RX_AW];     // at an absolute offset
                        nth <= 3'd0;
                        st  <= RD_ADDR;
                    end
                    MC_MOV: case (i_imm[3:0])
                        MC_TO_X:  X <= A[7:0];
                        MC_TO_Y:  Y <= A[7:0];
                        MC_TO_C:  C <= A[15:0];
                        MC_TO_RP: RP <= A[RX_AW-1:0];
                        MC_TO_RL: response_length <= A;
                        MC_TO_P:  size <= A[PW-1:0];
                        default: ;                       // the feeder's (its block)
                    endcase
                    MC_GET: A <= ~crc;                   // the program hash
                    MC_EM: begin
                        nth <= 3'd0;
                        st  <= EMIT;
                    end
                    MC_BW: begin
                        reg_addr <= i_imm[CORE_AW-1:0] | (i_md[1] ? Y : 8'd0);
                        reg_we   <= 1'b1;
                        bus_data <= A[BUS_BITS-1:0];
                        if (i_md[2]) Y <= Y + 1'b1;
                    end
                    MC_SV: begin
                        reg_addr <= {i_imm[15:8], {(CORE_AW - 8){1'b0}}} | Y;
                        st       <= SV_WAIT;
                    end
                    MC_HASH: if (!i_md[1]) st <= HASH;
                    MC_RUN: begin                        // START; the feeder and collector start with it
                        reg_addr <= CONTROL_BASE + R_START;
                        reg_we   <= 1'b1;
                        bus_data <= 1;
                        st       <= RUN;
                    end
                    MC_FSET: F <= (F & ~i_imm[12:8]) | i_imm[4:0];
                    MC_XY: begin
                        X <= X + i_imm[7:0];
                        Y <= Y + i_imm[15:8];
                    end
                    MC_IXY: begin
                        X <= i_imm[7:0];
                        Y <= i_imm[15:8];
                        C <= {{(16 - PW){1'b0}}, size};
                    end
                    MC_MUL: begin                        // A ← the register · imm[15:8], by additions (MULTIPLY)
                        A        <= 32'd0;
                        mul_left <= i_imm[15:8];
                        st       <= MULTIPLY;
                    end
                    default: ;
                endcase
            end
            RD_ADDR: st <= RD_TAKE;              // rx_addr = RP; its byte arrives next clock
            RD_TAKE: begin
                A   <= {rx_data, A[31:8]};
                RP  <= RP + 1'b1;
                nth <= nth + 3'd1;
                st  <= !last_byte ? RD_ADDR : (i_imm[2:0] == 3'd4) ? DECODE : RD_EXT;
            end
            RD_EXT: begin                        // shift the bytes read down, zero- or sign-filling
                A   <= {{8{a_byte_fill}}, A[31:8]};
                nth <= nth + 3'd1;
                if (nth == 3'd3) st <= DECODE;
            end
            EMIT: begin
                EP  <= EP + 1'b1;
                nth <= nth + 3'd1;
                if (emit_last) begin
                    st <= DECODE;
                    if (i_md[2]) X <= X + 1'b1;
                end
            end
            SV_WAIT: st <= SV_WRITE;             // the bank's word arrives
            SV_WRITE: begin                      // rf_we: it goes into the register at rf_at
                st <= DECODE;
                if (i_md[0]) X <= X + 1'b1;
                if (i_md[2]) Y <= Y + 1'b1;
            end
            HASH: if (!crc_busy) st <= DECODE;   // hash_feed: the byte goes into the hash
            RUN: if (run_over) st <= DECODE;
            MULTIPLY: if (mul_left == 8'd0) st <= DECODE;
                      else begin
                          A        <= total[31:0];
                          mul_left <= mul_left - 1'b1;
                      end
            default: st <= IDLE;
        endcase
    end

    // ---- the stream feeder: beats {q, f} from the request, in processing order (RUN) ----
    reg  [SW-1:0] feed_left;                                  // rows (steps) still to feed, K down to 1
    reg  [PW-1:0] feed_osc;
    reg  [1:0]  feed_state;                                   // 0 f's bytes, 1 q's bytes, 2 offer the beat
    reg         feed_second;                                  // an echo beat was taken once (by the + lane):
                                                              // it is offered again, to the − lane (pair_beats)
    reg         feed_wait;                                    // the address of byte feed_index is presented
    reg  [1:0]  feed_index;
    reg  [8*WB-1:0] feed_f, feed_q;
    // Running pointers, a byte a byte: f's and q's next byte in the request. A forward run reads its f row by row
    // from offset 12 on; an echo runs its steps last first, so after each row both go back two rows (feed_back,
    // −2P·WB bytes). The program sets where they start.
    reg  [RX_AW-1:0] feed_f_at, feed_q_at, feed_back;
    wire        feed_row_end = feed_state == 2'd2 && feed_osc + 1'b1 == size;
    wire [RX_AW-1:0] feed_move = feed_row_end ? feed_back : {{(RX_AW - 1){1'b0}}, 1'b1};
    assign in_data = {feed_q[WORD_BITS-1:0], feed_f[WORD_BITS-1:0]};
    assign rx_addr = feeding ? (feed_state[0] ? feed_q_at : feed_f_at) : RP;
    always @(posedge clk) begin
        if (rst || clear) begin
            feeding  <= 1'b0;
            in_valid <= 1'b0;
        end else if (moves_to) case (i_imm[3:0])
            MC_TO_K:  feed_left <= A[SW-1:0];
            MC_TO_FF: feed_f_at <= A[RX_AW-1:0];
            MC_TO_FQ: feed_q_at <= A[RX_AW-1:0];
            MC_TO_FB: feed_back <= A[RX_AW-1:0];
            default: ;
        endcase else if (run_start) begin
            feeding     <= 1'b1;
            feed_osc    <= {PW{1'b0}};
            feed_state  <= 2'd0;
            feed_index  <= 2'd0;
            feed_wait   <= 1'b0;
            feed_second <= 1'b0;
        end else if (feeding) begin
            if (feed_state != 2'd2) begin
                feed_wait <= !feed_wait;                             // a byte: present its address, then take it
                if (feed_wait) begin
                    if (feed_state == 2'd0) feed_f <= {rx_data, feed_f[8*WB-1:8]};   // byte 0 ends lowest
                    else feed_q <= {rx_data, feed_q[8*WB-1:8]};
                    if (feed_state == 2'd0) feed_f_at <= feed_f_at + feed_move;
                    else feed_q_at <= feed_q_at + feed_move;
                    if (feed_index + 2'd1 != WB[1:0]) feed_index <= feed_index + 2'd1;
                    else begin
                        feed_index <= 2'd0;
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
                if (feed_osc + 1'b1 != size) feed_osc <= feed_osc + 1'b1;
                else begin
                    feed_osc  <= {PW{1'b0}};
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

    // ---- the stream collector: out beats to the response, at forward time indices ----
    // out_at is the response byte written next: an echo's rows go back two rows after each, from the last row.
    wire [2:0]  out_bytes   = is_echo_run ? WOB[2:0] : WB[2:0];
    wire        out_row_end = is_echo_run && out_osc + 1'b1 == size;
    wire [63:0] out_wide    = {{(63 - WORD_BITS){out_data[WORD_BITS]}}, out_data};
    assign out_ready = collecting && !out_busy;
    always @(posedge clk) begin
        if (rst || clear) begin
            collecting <= 1'b0;
            out_busy   <= 1'b0;
        end else if (moves_to) case (i_imm[3:0])
            MC_TO_K:  out_left <= A[SW-1:0];
            MC_TO_OA: out_at <= A[TX_AW-1:0];
            MC_TO_OB: out_back <= A[TX_AW-1:0];
            default: ;
        endcase else if (run_start) begin
            collecting <= 1'b1;
            out_osc    <= {PW{1'b0}};
            out_busy   <= 1'b0;
        end else if (collecting) begin
            if (!out_busy) begin
                if (out_valid) begin                                 // taken this clock (out_ready is high)
                    out_value <= out_wide[8*WOB-1:0];
                    out_index <= 3'd0;
                    out_busy  <= 1'b1;
                end
            end else if (out_index + 3'd1 != out_bytes) begin
                out_index <= out_index + 3'd1;
                out_at    <= out_at + 1'b1;
            end else begin
                out_busy <= 1'b0;
                out_at   <= out_at + (out_row_end ? out_back + 1'b1 : {{(TX_AW - 1){1'b0}}, 1'b1});
                if (out_osc + 1'b1 != size) out_osc <= out_osc + 1'b1;
                else begin
                    out_osc  <= {PW{1'b0}};
                    out_left <= out_left - 1'b1;
                    if (out_left == 1'b1) collecting <= 1'b0;
                end
            end
        end
    end
endmodule
`default_nettype wire
