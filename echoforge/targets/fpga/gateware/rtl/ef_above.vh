// x > c for a constant c (x unsigned, both zero-extended to 64 bits), as a bit test: the first bit from the
// top where x and c differ decides. Yosys builds a compare as a carry chain, a cell a bit with no LUT of
// its own; against a constant this is a few LUTs.
function above;
    input [63:0] x;
    input [63:0] c;
    integer b;
    reg     decided;
    begin
        above   = 1'b0;
        decided = 1'b0;
        for (b = 63; b >= 0; b = b - 1)
            if (!decided && x[b] != c[b]) begin
                above   = x[b];
                decided = 1'b1;
            end
    end
endfunction
