// Testbench of ef_frame_tx alone (Icarus or Verilator --binary): builds the frames described in
// frames.hex — per frame: type, flags, seq (2), opcode (2), length (2), payload, little-endian — writes
// each payload last byte first, sends the frame, then resends it from the cache, and writes every byte
// put on the line to out.hex.
`timescale 1ns / 1ps
`default_nettype none
module ef_frame_tx_tb;
    reg         clk = 1'b0;
    reg         rst = 1'b1;
    reg  [7:0]  spec [0:65535];
    reg         start = 1'b0, pw_we = 1'b0, resend = 1'b0;
    reg  [11:0] pw_addr;
    reg  [7:0]  h_type, h_flags, pw_data;
    reg  [15:0] h_seq, h_opcode;
    reg  [31:0] h_length;
    wire        idle, out_valid;
    wire [7:0]  out_data;
    integer     frames, frame, at, index, out;

    ef_frame_tx #(.AW(12)) dut (
        .clk(clk), .rst(rst), .start(start), .region(1'b0), .h_type(h_type), .h_flags(h_flags), .h_seq(h_seq),
        .h_opcode(h_opcode), .h_length(h_length), .pw_we(pw_we), .pw_addr(pw_addr), .pw_data(pw_data),
        .resend(resend), .idle(idle), .out_data(out_data), .out_valid(out_valid), .out_ready(1'b1));

    always #5 clk = ~clk;
    always @(posedge clk) if (out_valid) $fwrite(out, "%02x\n", out_data);

    initial begin
        $readmemh("frames.hex", spec);
        out    = $fopen("out.hex", "w");
        frames = {spec[1], spec[0]};
        at     = 2;
        repeat (2) @(posedge clk);
        rst = 1'b0;
        for (frame = 0; frame < frames; frame = frame + 1) begin
            @(negedge clk);
            h_type   = spec[at];
            h_flags  = spec[at + 1];
            h_seq    = {spec[at + 3], spec[at + 2]};
            h_opcode = {spec[at + 5], spec[at + 4]};
            h_length = {16'd0, spec[at + 7], spec[at + 6]};
            at       = at + 8;
            for (index = h_length - 1; index >= 0; index = index - 1) begin
                pw_we   = 1'b1;
                pw_addr = index[11:0];
                pw_data = spec[at + index];
                @(negedge clk);
            end
            pw_we = 1'b0;
            start = 1'b1;
            @(negedge clk);
            start = 1'b0;
            at = at + h_length;
            while (!idle) @(negedge clk);
            resend = 1'b1;
            @(negedge clk);
            resend = 1'b0;
            while (!idle) @(negedge clk);
        end
        $fclose(out);
        $finish;
    end
endmodule
`default_nettype wire
