// Frame receiver (docs/protocol.md §2–3): COBS-decodes the bytes between 0x00 delimiters on the fly
// into the request buffer, runs the CRC over them, keeps the header and the epoch (payload bytes 0..3)
// in registers, and classifies each delimited chunk as §3.4 says:
//   empty or shorter than 16 bytes ............ line noise: nothing
//   more than ENC_LIMIT bytes without a 0x00 ... `damaged` at once; the rest is discarded to the next 0x00
//   bad COBS, shorter than 15 decoded bytes,
//   CRC mismatch, protocol byte, frame type,
//   length field or payload > MAX_REQ ......... `damaged` (the engine answers with a NACK)
//   otherwise .................................. `frame` (one-clock pulse; fields hold until the next frame)
// A chunk that starts while `accept` is low (the engine is busy with the previous request) is
// discarded whole, so the buffer the engine reads never changes under it; the host's resend repeats it.
// So while a frame is held its CRC unit is idle: the command executor's program hash borrows it (hash_*).
`default_nettype none
module ef_frame_rx #(
    parameter integer AW      = 12,     // request buffer: 2^AW bytes
    parameter integer MAX_REQ = 4081    // largest request payload, ≤ 2^AW − 15
) (
    input  wire          clk,
    input  wire          rst,
    input  wire [7:0]    in_data,
    input  wire          in_valid,
    input  wire          accept,
    output reg           frame,
    output reg           damaged,
    output wire [7:0]    f_type,
    output wire [7:0]    f_flags,
    output wire [15:0]   f_seq,
    output wire [15:0]   f_opcode,
    output wire [31:0]   f_length,
    output wire [31:0]   f_epoch,       // payload bytes 0..3 (the command executor reads the rest from the buffer)
    input  wire [AW-1:0] rd_addr,       // payload byte rd_addr (offset 0 = the first payload byte)
    output wire [7:0]    rd_data,       // one clock after rd_addr
    input  wire          hash_init,     // the CRC unit, while a frame is held (ef_crc32's ports)
    input  wire          hash_feed,
    input  wire [7:0]    hash_data,
    output wire [31:0]   hash,
    output wire          hash_busy
);
`include "ef_crc32.vh"
`include "ef_above.vh"
    localparam integer MAX_FRAME = MAX_REQ + 15;
    localparam integer ENC_LIMIT_COUNT = MAX_FRAME + MAX_FRAME / 254 + 1;  // cobs.max_encoded_length
    localparam [17:0]  ENC_LIMIT = ENC_LIMIT_COUNT[17:0];
    localparam [17:0]  MIN_ENCODED = 18'd16;
    localparam [1:0]   BETWEEN = 2'd0, COLLECT = 2'd1, DISCARD = 2'd2;

    reg [7:0]  header [0:10];  // (bytes 0, 9 and 10 and type's high bits are only checked: flags below)
    reg        protocol_ok, type_ok, length_small;   // protocol byte 0xE1, type 1..3, length < 2^16
    reg [7:0]  epoch [0:3];
    reg [1:0]  mode;
    localparam integer EW = $clog2(ENC_LIMIT_COUNT + 1);   // a chunk's bytes: at most ENC_LIMIT
    reg [EW-1:0] encoded;    // bytes of the chunk so far
    reg [EW-1:0] decoded;    // frame bytes decoded so far (≤ encoded)
    reg [7:0]  remaining;    // bytes left in the current COBS block
    reg        in_block;     // a code byte has been read
    reg        block_full;   // the current block's code is 0xFF: no zero follows it
    wire [31:0] crc;

    assign f_epoch  = {epoch[3], epoch[2], epoch[1], epoch[0]};
    assign f_type   = {6'd0, header[1][1:0]};              // a frame's type is 1..3 (type_ok)
    assign f_flags  = header[2];
    assign f_seq    = {header[4], header[3]};
    assign f_opcode = {header[6], header[5]};
    assign f_length = {16'd0, header[8], header[7]};       // a frame's length is below 2^16 (length_small)

    wire        is_code     = (remaining == 8'd0);
    wire        emit        = is_code ? (in_block && !block_full) : 1'b1;  // a code byte emits the zero the previous block implies
    wire [7:0]  emit_byte   = is_code ? 8'd0 : in_data;
    wire [EW-1:0] payload_len = decoded - 18'd15;
    wire        valid_frame = (remaining == 8'd0) && above(decoded, 14) && (crc == CRC_RESIDUE)
                              && protocol_ok && type_ok && length_small
                              && (f_length == {14'd0, payload_len}) && !above(payload_len, MAX_REQ);

    wire [EW-1:0] payload_index = decoded - 18'd11;   // where the byte being decoded goes in the buffer
    wire [4:0]  field_index   = decoded[4:0] - 5'd11;

    // The buffer is written while a chunk is collected and read while the engine answers its frame, and
    // a chunk that starts while the engine is busy is discarded: the two never share a clock.
    wire decode = !rst && in_valid && in_data != 8'd0 && mode == COLLECT && !above(encoded, ENC_LIMIT - 1'b1) && emit;
    wire store  = decode && above(decoded, 10) && !above(payload_index, (64'd1 << AW) - 1'b1);
    ef_crc32 check (.clk(clk), .init(hash_init || (in_valid && in_data != 8'd0 && mode == BETWEEN && accept)),
                    .feed(decode || hash_feed), .data(decode ? emit_byte : hash_data), .crc(crc), .busy(hash_busy));
    assign hash = crc;
    ef_ram #(.AW(AW)) buffer (.clk(clk), .we(store), .addr(store ? payload_index[AW-1:0] : rd_addr),
                              .wdata(emit_byte), .rdata(rd_data));

    always @(posedge clk) begin
        frame   <= 1'b0;
        damaged <= 1'b0;
        if (rst) begin
            mode <= BETWEEN;
        end else if (in_valid && in_data == 8'd0) begin            // a delimiter ends the chunk
            if (mode == COLLECT && above(encoded, MIN_ENCODED - 1'b1)) begin
                frame   <= valid_frame;
                damaged <= !valid_frame;
            end
            mode <= BETWEEN;
        end else if (in_valid) begin
            if (mode == BETWEEN || mode == COLLECT) begin
                if (mode == BETWEEN && !accept) begin
                    mode <= DISCARD;
                end else if (mode == BETWEEN || !above(encoded, ENC_LIMIT - 1'b1)) begin
                    mode    <= COLLECT;
                    encoded <= (mode == BETWEEN) ? 18'd1 : encoded + 18'd1;
                    if (mode == BETWEEN) begin
                        decoded   <= 18'd0;
                        in_block  <= 1'b1;
                        remaining <= in_data - 8'd1;
                        block_full <= (in_data == 8'hFF);
                    end else begin
                        if (is_code) begin
                            in_block   <= 1'b1;
                            remaining  <= in_data - 8'd1;
                            block_full <= (in_data == 8'hFF);
                        end else remaining <= remaining - 8'd1;
                        if (emit) begin
                            decoded <= decoded + 18'd1;
                            if (!above(decoded, 10)) header[decoded[3:0]] <= emit_byte;
                            if (decoded == 18'd0) protocol_ok <= emit_byte == 8'hE1;
                            if (decoded == 18'd1) type_ok <= emit_byte >= 8'd1 && emit_byte <= 8'd3;
                            if (decoded == 18'd9) length_small <= emit_byte == 8'd0;
                            if (decoded == 18'd10) length_small <= length_small && emit_byte == 8'd0;
                            else if (!above(decoded, 14)) epoch[field_index[1:0]] <= emit_byte;  // and the buffer (store)
                        end
                    end
                end else begin                                     // no delimiter within ENC_LIMIT bytes
                    damaged <= 1'b1;
                    mode    <= DISCARD;
                end
            end
        end
    end
endmodule
`default_nettype wire
