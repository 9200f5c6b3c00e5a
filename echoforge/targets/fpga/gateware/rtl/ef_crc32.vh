// CRC-32/ISO-HDLC (zlib.crc32; docs/protocol.md §3.2), one byte at a time, reflected: init 0xFFFFFFFF,
// polynomial 0xEDB88320, final xor 0xFFFFFFFF. Running the register (no final xor) over a frame and its
// little-endian CRC leaves the residue 0xDEBB20E3, so a receiver checks a frame without delaying it.
localparam [31:0] CRC_INIT    = 32'hFFFFFFFF;
localparam [31:0] CRC_RESIDUE = 32'hDEBB20E3;

function [31:0] crc32_byte;
    input [31:0] crc;
    input [7:0]  value;
    integer      k;
    reg   [31:0] c;
    begin
        c = crc ^ {24'd0, value};
        for (k = 0; k < 8; k = k + 1)
            c = c[0] ? ((c >> 1) ^ 32'hEDB88320) : (c >> 1);
        crc32_byte = c;
    end
endfunction
