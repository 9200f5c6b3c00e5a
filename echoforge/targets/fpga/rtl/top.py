"""The top module around the lane-step: register bus, lane issue, streams, memories, counters.

Issue. A run takes STEPS time steps; each step issues max(LANES, PIPELINE_DEPTH) slots, one per clock:
slot j < LANES issues lane j (forward: lane = row·P + oscillator; echo: lane = 2·(row·P + oscillator)
+ σ, the + echo then the − echo), the others are bubbles, so a lane reads its state only after its
previous step wrote it back. Stall: every pipeline register, memory port and counter moves on one
enable, ``advance``, which is low while the issue slot needs an input beat that is not valid or the
last stage holds an out beat that is not ready. So a beat is never dropped and nothing depends on when
the streams are valid: the bits are those of the emulator whatever the gaps.

Streams. In: one beat {q, f} (W bits each, two's complement) per (row, oscillator) per step, taken by
the + lane (the − lane reuses it, negating q; the forward ignores q). Out: the forward emits ϕ' per
lane, the echo the pair's forcing observable difference (m⁺ − m⁻ linear, T(z⁺) − T(z⁻) nonlinear) on
its − lane; W + 1 bits, two's complement.
"""

from __future__ import annotations

from dataclasses import dataclass

from echoforge.targets.emulator.fixed import FormatConfig

from .datapath import ACC_WIDTH, PARAM_FIELDS, Datapath, Memory
from .pipeline import NO_RW_CHECK

TOP = "echoforge_bank"
DATA_BITS = 64
COUNTERS = ("state", "force", "preact", "accumulator")
# Control registers (region "control"): name → (index, access, what)
CONTROL = {
    "START": (0, "w", "write 1: start a run with the settings below (ignored while busy)"),
    "MODE": (1, "rw", "0 forward, 1 echo (the ±ε pair)"),
    "FLIP": (2, "rw", "1: each lane's π is negated as its first step reads it (the echo's momentum flip)"),
    "OSCILLATORS": (3, "rw", "P, oscillators per batch row (1 .. max_oscillators)"),
    "LANES": (4, "rw", "lanes of the run: rows·P (forward), 2·rows·P (echo); ≤ max_lanes"),
    "STEPS": (5, "rw", "time steps of the run (32 bits)"),
    "STATUS": (6, "r", "bit 0: busy"),
    "PIPELINE_DEPTH": (7, "r", "least clocks per time step (LANES below it leaves bubbles)"),
    "CLOCKS_PER_STEP": (8, "r", "max(LANES, PIPELINE_DEPTH)"),
    "COUNTER_STATE": (9, "r", "state saturations of the last run (ϕ, π, m and nudge clamps; saturating u32)"),
    "COUNTER_FORCE": (10, "r", "force clamps"),
    "COUNTER_PREACT": (11, "r", "pre-activation clamps (nonlinear)"),
    "COUNTER_ACCUMULATOR": (12, "r", "echo accumulator clamps at ±2^62"),
    "CONFIG": (13, "r", "word_bits | kind << 8 (0 linear, 1 nonlinear) | lane_bits << 16 | oscillator_bits << 24"),
    "CYCLES": (14, "r", "clocks the last run was busy (stalls included)"),
}
# What each readable control register reads (zero-extended to 64 bits)
CONTROL_VALUES = {
    "MODE": "mode", "FLIP": "flip_setting", "OSCILLATORS": "oscillators", "LANES": "lanes", "STEPS": "steps",
    "STATUS": "busy", "PIPELINE_DEPTH": "DEPTH", "CLOCKS_PER_STEP": "slots",
    **{f"COUNTER_{name.upper()}": f"count_{name}" for name in COUNTERS},
    "CONFIG": "CONFIG_WORD", "CYCLES": "cycles",
}
REGIONS = ("control", "params", "phi", "pi", "acc")
REGION_BITS = 3


@dataclass(frozen=True)
class Layout:
    word_bits: int
    lane_bits: int
    osc_bits: int

    @property
    def index_bits(self) -> int:
        return max(self.lane_bits, self.osc_bits + 3, self.lane_bits - 1 + 3, 4)

    @property
    def address_bits(self) -> int:
        return REGION_BITS + self.index_bits

    def base(self, region: str) -> int:
        return REGIONS.index(region) << self.index_bits


def register_map(layout: Layout, config: FormatConfig, kind: str, datapath: Datapath, accumulators) -> dict:
    """The machine-readable register map (regmap.json)."""
    w = layout.word_bits
    return {
        "top": TOP, "kind": kind, "word_bits": w, "format": {"state": str(config.state), **vars(config)},
        "address_bits": layout.address_bits, "data_bits": DATA_BITS, "read_latency": 1,
        "max_lanes": 1 << layout.lane_bits, "max_oscillators": 1 << layout.osc_bits,
        "pipeline_depth": datapath.min_step_clocks,
        "control": {"base": layout.base("control"),
                    "registers": {name: {"address": layout.base("control") + index, "access": access, "what": what}
                                  for name, (index, access, what) in CONTROL.items()}},
        "params": {"base": layout.base("params"), "address": "base + oscillator·8 + field",
                   "fields": {name: k for k, name in enumerate(PARAM_FIELDS)}, "bits": w,
                   "what": "parameter codes in their formats (FormatConfig.param), two's complement"},
        "phi": {"base": layout.base("phi"), "address": "base + lane", "bits": w, "what": "ϕ of each lane"},
        "pi": {"base": layout.base("pi"), "address": "base + lane", "bits": w, "what": "π of each lane"},
        "acc": {"base": layout.base("acc"), "address": "base + pair·8 + row", "bits": ACC_WIDTH,
                "rows": {name: k for k, name in enumerate(accumulators)},
                "what": "echo accumulators of pair (row·P + oscillator), clamped to ±2^62"},
        "access": "memory regions are read and written only while STATUS.busy = 0; reads return the value "
                  "sign-extended to 64 bits one clock after reg_addr",
        "streams": {"in": {"bits": 2 * w, "beat": "{q, f}: the + nudge code (echo) and the forcing code, "
                                                  "one per (row, oscillator) per step, echo steps in reverse time"},
                    "out": {"bits": w + 1, "beat": "forward: ϕ' per lane; echo: the pair's forcing "
                                                   "observable difference (m or T(z), + minus −)"}},
    }


def verilog(datapath: Datapath, layout: Layout, kind: str, accumulators, readback=None,
            max_steps: int | None = None, flip: bool = True, pair_beats: bool = False) -> str:
    """The whole top module (Verilog-2005). ``readback``: the control registers (CONTROL_VALUES names) and
    memory regions the bus reads, the others reading 0 (None: all); a bank for such a known reader selects
    its memories' read-back by address (``_readback``). ``max_steps``: the largest STEPS the
    bus ever writes (None: any u32): STEPS and the step count are that wide, and the saturation counters
    as wide as a run can count (≤ 15 a lane-step), so they never saturate and read as the u32 ones would.
    ``flip`` False: FLIP stays 0 whatever is written (for a writer that negates π itself), and the
    datapath's negation goes. ``pair_beats``: in the echo both lanes of a pair take an input beat (the
    writer offers each (f, q) twice), so the bank keeps no copy of the first for the second."""
    w, lb, ob = layout.word_bits, layout.lane_bits, layout.osc_bits
    ib, ab = layout.index_bits, layout.address_bits
    config_word = w | (int(kind == "nonlinear") << 8) | (lb << 16) | (ob << 24)
    controls = "\n".join(f"localparam R_{name} = {index};" for name, (index, _, _) in CONTROL.items())
    step_bits = 32 if max_steps is None else max(1, max_steps.bit_length())
    counter_bits = 32 if max_steps is None else min(32, (15 * (1 << lb) * max_steps).bit_length())
    sections = [
        _HEADER.replace("@W@", str(w)).replace("@AB@", str(ab)),
        (f"localparam W = {w};\nlocalparam LB = {lb};\nlocalparam OB = {ob};\nlocalparam IB = {ib};\n"
         f"localparam DEPTH = {datapath.min_step_clocks};\nlocalparam LAST = {datapath.last_stage};\n"
         f"localparam [31:0] CONFIG_WORD = 32'h{config_word:08x};\nlocalparam SB = {step_bits};\n{controls}"),
        _control(flip, pair_beats),
        datapath.pipeline.emit(),
        "// ---- memories ----",
        *(_memory(m, layout, readback) for m in datapath.memories),
        _readback(datapath.memories, readback, w),
        _counters(datapath, counter_bits),
        f"assign out_data = {datapath.out_data};\nassign out_pending = {datapath.out_valid};",
        "endmodule",
    ]
    return "\n\n".join(sections) + "\n"


def _control(flip: bool, pair_beats: bool) -> str:
    """The control template with its options filled in."""
    if pair_beats:
        hold_regs, need_pair, next_pair = "", "", ""
        hold = ("wire signed [W-1:0] f = in_f;  // both lanes of an echo pair take the beat\n"
                "wire signed [W-1:0] q = !mode ? {W{1'b0}} : in_q;\n")
    else:
        hold_regs = "reg signed [W-1:0] f_hold, q_hold;\n"
        need_pair, next_pair = " && !(mode && sigma_count)", " && !(mode && !sigma_count)"
        hold = ("wire signed [W-1:0] f = sigma_count ? f_hold : in_f;\n"
                "wire signed [W-1:0] q = !mode ? {W{1'b0}} : (sigma_count ? q_hold : in_q);\n"
                "always @(posedge clk) if (advance && need_in) begin f_hold <= in_f; q_hold <= in_q; end\n")
    fills = {"@FLIP_WRITE@": "flip_setting <= reg_wdata[0];" if flip else ";  // stays 0",
             "@HOLD_REGS@": hold_regs, "@NEED_PAIR@": need_pair, "@NEXT_PAIR@": next_pair, "@HOLD@": hold}
    text = _CONTROL
    for mark, fill in fills.items():
        if mark not in text:
            raise AssertionError(f"{mark} is not in the control template")
        text = text.replace(mark, fill)
    return text


def _memory(memory: Memory, layout: Layout, readback=None) -> str:
    """A 1R1W memory; the register bus owns its ports while the core is idle. With ``readback`` (a known
    reader), a memory the bus reads has as many words again that stay 0, and the bus reads one of those
    while another register is addressed (its read data needs no select: ``_readback``)."""
    n = memory.name
    readable = readback is not None and memory.region in readback and memory.readable
    depth = 2 * memory.depth if readable else memory.depth
    lines = [f"{NO_RW_CHECK} reg [{memory.width - 1}:0] {n} [0:{depth - 1}];",
             f"reg signed [{memory.width - 1}:0] {memory.data};"]
    if memory.init:
        lines.append(f'initial $readmemh("{memory.init}", {n});')
    if readable:
        lines.append(f"integer {n}_zero;\ninitial for ({n}_zero = {memory.depth}; {n}_zero < {depth}; "
                     f"{n}_zero = {n}_zero + 1) {n}[{n}_zero] = {memory.width}'d0;")
    bus_index, bus_write = _bus_port(memory, layout)
    read_address = f"(busy ? {memory.read_address} : {bus_index})" if bus_index else memory.read_address
    if readable:
        read_address = f"(busy ? {{1'b0, {memory.read_address}}} : {{!({_bus_hit(memory)}), {bus_index}}})"
    lines.append(f"always @(posedge clk) if (busy ? advance : 1'b1) {memory.data} <= {n}[{read_address}];")
    writes = []
    if memory.write:
        enable, address, data = memory.write
        writes.append(f"if (busy && advance && {enable}) {n}[{address}] <= {data};")
    if bus_write:
        writes.append(f"if (!busy && {bus_write}) {n}[{bus_index}] <= reg_wdata[{memory.width - 1}:0];")
    if writes:
        lines.append("always @(posedge clk) begin " + " ".join(writes) + " end")
    return "\n".join(lines)


def _bus_port(memory: Memory, layout: Layout) -> tuple[str, str]:
    """(the memory address the bus selects, the bus write condition) — empty for ROMs."""
    region = memory.region
    if region is None:
        return "", ""
    hit = f"reg_we && {_bus_hit(memory)}"
    if region in ("phi", "pi"):
        return f"reg_index[{layout.lane_bits - 1}:0]", hit
    bits = layout.osc_bits if region == "params" else layout.lane_bits - 1
    return f"reg_index[{bits + 2}:3]", hit


def _bus_hit(memory: Memory) -> str:
    """Whether reg_addr is in the memory (its region, and its field in a params / acc region)."""
    hit = f"reg_region == 3'd{REGIONS.index(memory.region)}"
    return hit if memory.region in ("phi", "pi") else f"{hit} && reg_index[2:0] == 3'd{memory.field}"


def _readback(memories: list[Memory], readback=None, word_bits: int = 64) -> str:
    """reg_rdata: the addressed register or memory word, sign-extended, one clock after reg_addr. The
    address is decoded into one select register per source as it arrives, so the read data is an
    AND-OR of registered selects and registers (control registers are read as they are in that clock,
    memories as they were read at the address): a few logic levels, whatever the sources.

    For a known reader (``readback`` not None) a memory selects itself by address instead (``_memory``'s
    zero words), so its read data is ORed in without a select — an AND-OR took a LUT per bit and source,
    ~130 logic cells of a 16-oscillator bank — and ϕ/π words are sign-extended to W + 1 bits only (the
    executor reads no more of them: a sample's bytes, a bus word, −π)."""
    lines = ["// ---- register read-back ----"]
    sources = [(f"read_{name.lower()}", f"reg_region == 3'd0 && reg_index == R_{name}", value)
               for name, value in CONTROL_VALUES.items() if readback is None or name in readback]
    by_address = []
    for m in memories:
        if m.region is None or not m.readable or (readback is not None and m.region not in readback):
            continue
        if readback is None:
            lines.append(f"wire signed [63:0] {m.name}_bus = {m.data};")
            sources.append((f"read_{m.name}", _bus_hit(m), f"{m.name}_bus"))
        elif m.region in ("phi", "pi"):
            by_address.append(f"{{{{{63 - word_bits}{{1'b0}}}}, {m.data}[{m.width - 1}], {m.data}}}")
        else:
            by_address.append(m.data if m.width == 64 else f"{{{{{64 - m.width}{{{m.data}[{m.width - 1}]}}}}, {m.data}}}")
    for select, hit, _ in sources:
        lines.append(f"reg {select};\nalways @(posedge clk) {select} <= {hit};")
    terms = [f"({{64{{{select}}}}} & {value})" for select, _, value in sources] + by_address
    joined = " |\n    ".join(terms)
    lines.append(f"assign reg_rdata = {joined};" if terms else "assign reg_rdata = 64'd0;")
    return "\n".join(lines)


def _counters(datapath: Datapath, bits: int = 32) -> str:
    lines = ["// ---- saturation counters (saturating u32, cleared by START) ----"]
    for name in COUNTERS:
        if bits < 32:   # a bound on the run: the count never reaches 2^bits − 1, so it never saturates
            lines += [f"wire [3:0] count_{name}_inc = {datapath.increments[name]};",
                      f"wire [{bits - 1}:0] count_{name}_sum = count_{name}[{bits - 1}:0] + {{{bits - 4}'d0, count_{name}_inc}};",
                      (f"always @(posedge clk) if (rst || start) count_{name} <= 32'd0; "
                       f"else if (busy && advance) count_{name} <= {{{32 - bits}'d0, count_{name}_sum}};")]
            continue
        lines += [f"wire [3:0] count_{name}_inc = {datapath.increments[name]};",
                  f"wire [32:0] count_{name}_sum = {{1'b0, count_{name}}} + {{29'd0, count_{name}_inc}};",
                  (f"always @(posedge clk) if (rst || start) count_{name} <= 32'd0; "
                   f"else if (busy && advance) count_{name} <= count_{name}_sum[32] ? 32'hffffffff : "
                   f"count_{name}_sum[31:0];")]
    return "\n".join(lines)


_HEADER = """\
// Generated by echoforge.targets.fpga.rtl: one oscillator bank, bit-exact to the emulator's int64
// kernels (echoforge/targets/emulator/kernels.py). Do not edit: regenerate.
`default_nettype none
module echoforge_bank (
    input  wire              clk,
    input  wire              rst,
    input  wire [@AB@-1:0]   reg_addr,
    input  wire              reg_we,
    input  wire [63:0]       reg_wdata,
    output wire [63:0]       reg_rdata,
    input  wire              in_valid,
    output wire              in_ready,
    input  wire [2*@W@-1:0]  in_data,
    output wire              out_valid,
    input  wire              out_ready,
    output wire [@W@:0]      out_data,
    output wire              busy
);"""

_CONTROL = """\
// ---- register bus ----
wire [2:0] reg_region = reg_addr[IB+2:IB];
wire [IB-1:0] reg_index = reg_addr[IB-1:0];
wire control_write = reg_we && reg_region == 3'd0;
reg mode, flip_setting;
reg [OB:0] oscillators;
reg [LB:0] lanes;
reg [SB-1:0] steps;
reg steps_zero, steps_one;  // STEPS == 0, == 1, and slots = max(LANES, DEPTH): decided as they are written,
reg [LB:0] slots;           // so a start acts on registers only
reg [31:0] count_state, count_force, count_preact, count_accumulator, cycles;
reg running, busy_r, draining;
reg [7:0] drain;  // advances left, after the last issue, until the last lane has left the pipeline
// START is decoded into a register and acted on one clock later (the decode does not drive the many
// registers a start resets); busy covers that clock, so the bus sees the run begin at once
reg start;
always @(posedge clk) start <= !rst && control_write && reg_index == R_START && reg_wdata[0] && !busy;
assign busy = busy_r || start;  // starting, running, or lanes still in the pipeline
always @(posedge clk) begin
    if (rst) begin
        mode <= 1'b0; flip_setting <= 1'b0; oscillators <= 1; lanes <= 1; slots <= DEPTH;
        steps <= 32'd0; steps_zero <= 1'b1; steps_one <= 1'b0;
    end else if (control_write && !busy) begin
        case (reg_index)
            R_MODE: mode <= reg_wdata[0];
            R_FLIP: @FLIP_WRITE@
            R_OSCILLATORS: oscillators <= reg_wdata[OB:0];
            R_LANES: begin lanes <= reg_wdata[LB:0]; slots <= (reg_wdata[LB:0] > DEPTH) ? reg_wdata[LB:0] : DEPTH; end
            R_STEPS: begin
                steps <= reg_wdata[SB-1:0]; steps_zero <= reg_wdata[SB-1:0] == 0; steps_one <= reg_wdata[SB-1:0] == 1;
            end
            default: ;
        endcase
    end
end

// ---- lane issue (limits registered at START, so no compare against a subtraction sits on the issue path) ----
reg [LB:0] slot, slot_before_last, lane_last;
reg [SB-1:0] steps_left;  // after the current step
reg [OB-1:0] osc_count, osc_last;
reg sigma_count, slot_live, first_step, last_step;
reg last_slot;  // the slot issuing now is the step's last (a register: it enables the step's counters)
reg need_in;    // the slot issuing now takes an input beat: slot_live@NEED_PAIR@, kept as a
                // register because `advance`, which every pipeline register waits on, derives from it
@HOLD_REGS@wire out_pending;
wire advance = (!need_in || in_valid) && (!out_pending || out_ready);
assign in_ready = need_in && (!out_pending || out_ready);
assign out_valid = out_pending && (!need_in || in_valid);
wire signed [W-1:0] in_f = in_data[W-1:0];
wire signed [W-1:0] in_q = in_data[2*W-1:W];
// stage-0 signals of the lane-step
wire live = slot_live;
wire echo = mode;
wire sigma = sigma_count;
wire flip = flip_setting && first_step;
wire [LB-1:0] lane = slot[LB-1:0];
wire [OB-1:0] osc = osc_count;
@HOLD@always @(posedge clk) begin
    if (rst) begin
        running <= 1'b0; busy_r <= 1'b0; draining <= 1'b0; slot_live <= 1'b0; need_in <= 1'b0; cycles <= 32'd0;
    end else if (start) begin
        running <= !steps_zero; busy_r <= !steps_zero; first_step <= 1'b1;
        slot_live <= !steps_zero; need_in <= !steps_zero;
        slot <= 0; last_slot <= 1'b0; osc_count <= 0; sigma_count <= 1'b0; cycles <= 32'd0;
        steps_left <= steps - 32'd1; last_step <= steps_one;
        slot_before_last <= slots - 2'd2; lane_last <= lanes - 1'b1;  // slots ≥ DEPTH ≥ 2
        osc_last <= oscillators[OB-1:0] - 1'b1;
    end else begin
        if (busy) cycles <= cycles + 32'd1;
        if (running && advance) begin
            if (last_slot) begin
                slot <= 0; last_slot <= 1'b0; osc_count <= 0; sigma_count <= 1'b0; first_step <= 1'b0;
                steps_left <= steps_left - 32'd1; last_step <= steps_left == 32'd1;
                slot_live <= !last_step; need_in <= !last_step;
                if (last_step) begin running <= 1'b0; draining <= 1'b1; drain <= LAST - 1; end
            end else begin
                slot <= slot + 1'b1;
                last_slot <= slot == slot_before_last;
                slot_live <= slot_live && slot != lane_last;
                need_in <= slot_live && slot != lane_last@NEXT_PAIR@;
                if (mode && !sigma_count) sigma_count <= 1'b1;
                else begin
                    sigma_count <= 1'b0;
                    osc_count <= (osc_count == osc_last) ? {OB{1'b0}} : osc_count + 1'b1;
                end
            end
        end else if (draining && advance) begin
            drain <= drain - 8'd1;
            if (drain == 8'd0) begin draining <= 1'b0; busy_r <= 1'b0; end
        end
    end
end"""
