// Frame transmitter (docs/protocol.md §2–3). The engine writes a response's payload into the buffer
// at any offsets (an echo chunk's observables come out in reverse time), then starts the frame with
// its header fields: the header is written, the CRC-32 runs over header and payload (ef_crc32: nine
// or ten clocks a byte) and is appended, and the frame goes out COBS-encoded between two 0x00 delimiters. The buffer has two
// regions: the response region, which keeps the last response's exact bytes (the one-entry response
// cache of rule D1: `resend` sends it again), and a 16-byte control region for ACK and NACK frames,
// so that acknowledging a request never overwrites the cache.
//
// COBS needs each block's length before its bytes: the encoder scans the buffer ahead for the next
// zero (at most 254 bytes, two clocks a byte), sends the code byte, then the block. At 12 MHz and
// 3 Mbaud a byte takes 40 clocks on the line, so the scans cost about 5 % of the line's time.
`default_nettype none
module ef_frame_tx #(
    parameter integer AW = 12                // transmit buffer: 2^AW bytes; largest response 2^AW − 31 bytes
) (
    input  wire        clk,
    input  wire        rst,
    input  wire        start,                 // in IDLE: begin a frame in `region` with these header fields
    input  wire        region,                // 0 response, 1 control
    input  wire [7:0]  h_type,
    input  wire [7:0]  h_flags,
    input  wire [15:0] h_seq,
    input  wire [15:0] h_opcode,
    input  wire [31:0] h_length,
    input  wire        pw_we,                 // in IDLE: write payload byte pw_addr of the response region
    input  wire [AW-1:0] pw_addr,
    input  wire [7:0]  pw_data,
    input  wire        resend,                // in IDLE: send the response region's frame again
    output wire        idle,
    output wire [7:0]  out_data,              // to the UART
    output wire        out_valid,
    input  wire        out_ready
);
`include "ef_crc32.vh"
    localparam [3:0] IDLE = 4'd0, HEADER = 4'd1, CRC_A = 4'd2, TRAILER = 4'd3, LEAD = 4'd4, SCAN_A = 4'd5,
                     SCAN_B = 4'd6, CODE = 4'd7, COPY_A = 4'd8, COPY_B = 4'd9, NEXT = 4'd10, TAIL = 4'd11,
                     CRC_B = 4'd12;
    localparam [1:0] ENDS = 2'd0, ZERO = 2'd1, FULL = 2'd2;     // how a COBS block ends
    localparam [16:0] CONTROL_BASE = (17'd1 << AW) - 17'd16;

    wire [7:0] rd_data;                       // the buffer's byte at read_at, one clock later
    reg [3:0]  state;
    reg        sel;                           // region of the frame being built or sent
    reg [7:0]  l_type, l_flags;
    reg [15:0] l_seq, l_opcode;
    reg [31:0] l_length;
    wire [31:0] crc;
    wire       crc_busy;
    localparam integer CW = (AW > 8 ? AW : 8) + 1;   // a frame's bytes (≤ 2^AW) or a block's (≤ 254)
    reg [CW-1:0] index;                       // header, payload or trailer byte being written
    reg [CW-1:0] response_len, control_len;   // frame bytes held in each region
    reg [CW-1:0] block_start, block_len, copied;
    reg [1:0]  block_end;
    reg [7:0]  code;

    wire [16:0] base      = sel ? CONTROL_BASE : 17'd0;
    wire [16:0] frame_len = sel ? control_len : response_len;
    wire [31:0] crc_out   = ~crc;
    reg  [7:0]  header_byte;
    always @(*) begin
        case (index[3:0])
            4'd0: header_byte = 8'hE1;          // 0xE0 | protocol version 1
            4'd1: header_byte = l_type;
            4'd2: header_byte = l_flags;
            4'd3: header_byte = l_seq[7:0];
            4'd4: header_byte = l_seq[15:8];
            4'd5: header_byte = l_opcode[7:0];
            4'd6: header_byte = l_opcode[15:8];
            4'd7: header_byte = l_length[7:0];
            4'd8: header_byte = l_length[15:8];
            4'd9: header_byte = l_length[23:16];
            default: header_byte = l_length[31:24];
        endcase
    end
    reg [7:0] trailer_byte;
    always @(*) begin
        case (index[1:0])
            2'd0: trailer_byte = crc_out[7:0];
            2'd1: trailer_byte = crc_out[15:8];
            2'd2: trailer_byte = crc_out[23:16];
            default: trailer_byte = crc_out[31:24];
        endcase
    end

    wire        payload_write = (state == IDLE) && pw_we;
    wire        crc_ready  = !crc_busy;           // the CRC has taken the last byte fed
    wire        writing    = ((state == HEADER) || (state == TRAILER)) && crc_ready || payload_write;
    wire [16:0] write_at   = payload_write ? 17'd11 + {{(17 - AW){1'b0}}, pw_addr}
                             : base + (state == HEADER ? index : 17'd11 + l_length[16:0] + index);
    wire [7:0]  write_byte = payload_write ? pw_data : state == HEADER ? header_byte : trailer_byte;
    wire        crc_pass   = (state == CRC_A) || (state == CRC_B);
    wire [16:0] read_at    = base + (crc_pass ? 17'd11 + index
                                     : block_start + ((state == COPY_A || state == COPY_B) ? copied : block_len));

    ef_crc32 check (.clk(clk), .init(state == IDLE), .feed(crc_ready && (state == HEADER || state == CRC_B)),
                    .data(state == HEADER ? header_byte : rd_data), .crc(crc), .busy(crc_busy));

    // No state reads the buffer in the clock after it wrote it, so one port serves both.
    ef_ram #(.AW(AW)) buffer (.clk(clk), .we(writing), .addr(writing ? write_at[AW-1:0] : read_at[AW-1:0]),
                              .wdata(write_byte), .rdata(rd_data));

    assign idle       = (state == IDLE);
    assign out_valid  = (state == LEAD) || (state == TAIL) || (state == CODE) || (state == COPY_B);
    assign out_data   = (state == CODE) ? code : (state == COPY_B) ? rd_data : 8'h00;

    always @(posedge clk) begin
        if (rst) begin
            state <= IDLE;
            sel   <= 1'b0;
        end else case (state)
            IDLE: if (start) begin
                sel      <= region;
                l_type   <= h_type;
                l_flags  <= h_flags;
                l_seq    <= h_seq;
                l_opcode <= h_opcode;
                l_length <= h_length;
                index    <= 17'd0;
                state    <= HEADER;
            end else if (resend) begin
                sel   <= 1'b0;
                state <= LEAD;
            end
            HEADER: if (crc_ready) begin                 // header_byte goes into the CRC and the buffer
                index <= (index == 17'd10) ? 17'd0 : index + 17'd1;
                if (index == 17'd10) state <= (l_length == 32'd0) ? TRAILER : CRC_A;
            end
            CRC_A: state <= CRC_B;
            CRC_B: if (crc_ready) begin                  // rd_data goes into the CRC
                index <= index + 17'd1;
                state <= CRC_A;
                if (index + 17'd1 == l_length[16:0]) begin
                    index <= 17'd0;
                    state <= TRAILER;
                end
            end
            TRAILER: if (crc_ready) begin
                index <= index + 17'd1;
                if (index == 17'd3) begin
                    if (sel) control_len <= 17'd15 + l_length[16:0];
                    else response_len <= 17'd15 + l_length[16:0];
                    state <= LEAD;
                end
            end
            LEAD: if (out_ready) begin
                block_start <= 17'd0;
                block_len   <= 17'd0;
                state       <= SCAN_A;
            end
            SCAN_A: state <= SCAN_B;
            SCAN_B: begin
                if (block_start + block_len == frame_len) begin
                    code      <= block_len[7:0] + 8'd1;
                    block_end <= ENDS;
                    state     <= CODE;
                end else if (rd_data == 8'd0) begin
                    code      <= block_len[7:0] + 8'd1;
                    block_end <= ZERO;
                    state     <= CODE;
                end else if (block_len == 17'd253) begin
                    block_len <= 17'd254;
                    code      <= 8'hFF;
                    block_end <= FULL;
                    state     <= CODE;
                end else begin
                    block_len <= block_len + 17'd1;
                    state     <= SCAN_A;
                end
            end
            CODE: if (out_ready) begin
                copied <= 17'd0;
                state  <= (block_len == 17'd0) ? NEXT : COPY_A;
            end
            COPY_A: state <= COPY_B;
            COPY_B: if (out_ready) begin
                copied <= copied + 17'd1;
                state  <= (copied + 17'd1 == block_len) ? NEXT : COPY_A;
            end
            NEXT: begin
                block_len <= 17'd0;
                case (block_end)
                    ZERO: begin
                        block_start <= block_start + block_len + 17'd1;
                        state       <= SCAN_A;
                    end
                    FULL: begin
                        block_start <= block_start + 17'd254;
                        state       <= (block_start + 17'd254 == frame_len) ? TAIL : SCAN_A;
                    end
                    default: state <= TAIL;
                endcase
            end
            TAIL: if (out_ready) state <= IDLE;
            default: state <= IDLE;
        endcase
    end
endmodule
`default_nettype wire
