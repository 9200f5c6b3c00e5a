// Frame transmitter (docs/protocol.md §2–3). The engine writes a response's payload into the buffer
// at any offsets (an echo chunk's observables come out in reverse time), then starts the frame with
// its header fields: the header is written, the CRC-32 runs over header and payload (ef_crc32: nine
// or ten clocks a byte) and is appended, and the frame goes out COBS-encoded between two 0x00
// delimiters. The buffer has two regions: the response region, which keeps the last response's exact
// bytes (the one-entry response cache of rule D1: `resend` sends it again), and a 16-byte control
// region for ACK and NACK frames, so that acknowledging a request never overwrites the cache.
//
// COBS needs each block's length before its bytes: the encoder scans the buffer ahead for the next
// zero (at most 254 bytes, two clocks a byte), sends the code byte, then the block. At 12 MHz and
// 3 Mbaud a byte takes 40 clocks on the line, so the scans cost about 5 % of the line's time.
//
// Addresses are two running pointers rather than offsets added to bases: `at` writes the header,
// reads the payload for the CRC, writes the trailer, then scans ahead; `block_at` follows it, copying
// the block the scan has measured. A region's frame ends where `at` stood after its trailer.
`default_nettype none
module ef_frame_tx #(
    parameter integer AW = 12                // transmit buffer: 2^AW bytes; largest response 2^AW − 31 bytes
) (
    input  wire        clk,
    input  wire        rst,
    input  wire        start,                 // in IDLE: begin a frame in `region` with these header fields,
                                              // which hold until `idle` (they are not copied)
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
    localparam [3:0] IDLE = 4'd0, HEADER = 4'd1, CRC_A = 4'd2, TRAILER = 4'd3, LEAD = 4'd4, SCAN_A = 4'd5,
                     SCAN_B = 4'd6, CODE = 4'd7, COPY_A = 4'd8, COPY_B = 4'd9, NEXT = 4'd10, TAIL = 4'd11,
                     CRC_B = 4'd12;
    localparam [1:0] ENDS = 2'd0, ZERO = 2'd1, FULL = 2'd2;     // how a COBS block ends
    localparam [AW-1:0] CONTROL_BASE = {{(AW - 4){1'b1}}, 4'd0};  // the last 16 bytes
    localparam [AW-1:0] HEADER_BYTES = 11;

    wire [7:0] rd_data;                       // the buffer's byte at the read address, one clock later
    reg [3:0]  state;
    reg        sel;                           // region of the frame being built or sent
    wire [31:0] crc;
    wire       crc_busy;
    reg [3:0]  index;                         // header or trailer byte being written
    reg [AW-1:0] at, block_at;                // the scan (and build) pointer; the copy pointer
    reg [AW-1:0] payload_end;                 // where the response's payload ends (the trailer starts)
    reg [AW-1:0] response_end, control_end;   // where each region's frame ends
    reg [7:0]  block_len;                     // bytes of the block being scanned (≤ 254)
    reg [1:0]  block_end;

    wire [AW-1:0] next_at   = at + 1'b1;
    wire [AW-1:0] frame_end = sel ? control_end : response_end;
    wire [31:0] crc_out     = ~crc;
    reg  [7:0]  header_byte;
    always @(*) begin
        case (index)
            4'd0: header_byte = 8'hE1;          // 0xE0 | protocol version 1
            4'd1: header_byte = h_type;
            4'd2: header_byte = h_flags;
            4'd3: header_byte = h_seq[7:0];
            4'd4: header_byte = h_seq[15:8];
            4'd5: header_byte = h_opcode[7:0];
            4'd6: header_byte = h_opcode[15:8];
            4'd7: header_byte = h_length[7:0];
            4'd8: header_byte = h_length[15:8];
            4'd9: header_byte = h_length[23:16];
            default: header_byte = h_length[31:24];
        endcase
    end
    wire [7:0] trailer_byte = crc_out[8 * index[1:0] +: 8];

    wire        payload_write = (state == IDLE) && pw_we;
    wire        crc_ready  = !crc_busy;           // the CRC has taken the last byte fed
    wire        writing    = ((state == HEADER) || (state == TRAILER)) && crc_ready || payload_write;
    wire        copying    = (state == COPY_A) || (state == COPY_B);
    wire [AW-1:0] address  = payload_write ? HEADER_BYTES + pw_addr : copying ? block_at : at;
    wire [7:0]  write_byte = payload_write ? pw_data : state == HEADER ? header_byte : trailer_byte;

    ef_crc32 check (.clk(clk), .init(state == IDLE), .feed(crc_ready && (state == HEADER || state == CRC_B)),
                    .data(state == HEADER ? header_byte : rd_data), .crc(crc), .busy(crc_busy));

    // No state reads the buffer in the clock after it wrote it, so one port serves both.
    ef_ram #(.AW(AW)) buffer (.clk(clk), .we(writing), .addr(address), .wdata(write_byte), .rdata(rd_data));

    assign idle       = (state == IDLE);
    assign out_valid  = (state == LEAD) || (state == TAIL) || (state == CODE) || (state == COPY_B);
    assign out_data   = (state == CODE) ? block_len + 8'd1 : (state == COPY_B) ? rd_data : 8'h00;

    always @(posedge clk) begin
        if (rst) begin
            state <= IDLE;
            sel   <= 1'b0;
        end else case (state)
            IDLE: if (start) begin
                sel         <= region;
                at          <= region ? CONTROL_BASE : {AW{1'b0}};
                payload_end <= HEADER_BYTES + h_length[AW-1:0];   // a control frame has no payload
                index       <= 4'd0;
                state       <= HEADER;
            end else if (resend) begin
                sel   <= 1'b0;
                state <= LEAD;
            end
            HEADER: if (crc_ready) begin                 // header_byte goes into the CRC and the buffer
                at    <= next_at;
                index <= (index == 4'd10) ? 4'd0 : index + 4'd1;
                if (index == 4'd10) state <= (h_length == 32'd0) ? TRAILER : CRC_A;
            end
            CRC_A: state <= CRC_B;
            CRC_B: if (crc_ready) begin                  // rd_data goes into the CRC
                at    <= next_at;
                state <= (next_at == payload_end) ? TRAILER : CRC_A;
            end
            TRAILER: if (crc_ready) begin
                at    <= next_at;
                index <= index + 4'd1;
                if (index == 4'd3) begin
                    if (sel) control_end <= next_at;
                    else response_end <= next_at;
                    state <= LEAD;
                end
            end
            LEAD: if (out_ready) begin
                at        <= sel ? CONTROL_BASE : {AW{1'b0}};
                block_at  <= sel ? CONTROL_BASE : {AW{1'b0}};
                block_len <= 8'd0;
                state     <= SCAN_A;
            end
            SCAN_A: state <= SCAN_B;
            SCAN_B:                                      // rd_data: the byte at `at`
                if (at == frame_end) begin
                    block_end <= ENDS;
                    state     <= CODE;
                end else if (rd_data == 8'd0) begin
                    block_end <= ZERO;
                    state     <= CODE;
                end else begin
                    at        <= next_at;
                    block_len <= block_len + 8'd1;
                    if (block_len == 8'd253) begin
                        block_end <= FULL;               // code 0xFF: 254 bytes, no zero implied
                        state     <= CODE;
                    end else state <= SCAN_A;
                end
            CODE: if (out_ready) state <= (block_at == at) ? NEXT : COPY_A;
            COPY_A: state <= COPY_B;
            COPY_B: if (out_ready) begin                 // the block is block_at .. at − 1
                block_at <= block_at + 1'b1;
                state    <= (block_at + 1'b1 == at) ? NEXT : COPY_A;
            end
            NEXT: begin
                block_len <= 8'd0;
                case (block_end)
                    ZERO: begin                          // past the zero the code implied
                        at       <= next_at;
                        block_at <= next_at;
                        state    <= SCAN_A;
                    end
                    FULL: state <= (at == frame_end) ? TAIL : SCAN_A;
                    default: state <= TAIL;
                endcase
            end
            TAIL: if (out_ready) state <= IDLE;
            default: state <= IDLE;
        endcase
    end
endmodule
`default_nettype wire
