// CRC-32/ISO-HDLC (zlib.crc32; docs/protocol.md §3.2), reflected: init 0xFFFFFFFF, polynomial 0xEDB88320,
// final xor 0xFFFFFFFF. Running the register (no final xor) over a frame and its little-endian CRC
// leaves the residue 0xDEBB20E3, so a receiver checks a frame without delaying it. ef_crc32 computes it.
localparam [31:0] CRC_INIT    = 32'hFFFFFFFF;
localparam [31:0] CRC_RESIDUE = 32'hDEBB20E3;
