"""The HRU lane-step as a staged netlist: targets/emulator/kernels.py written once more, in Verilog.

One lane-step per clock. A lane is (batch row, oscillator) in the forward, (batch row, oscillator, ±)
in the echo, the two echoes of a pair issued on consecutive clocks (+ then −), so the pair's
observable differences are formed by holding the + lane's values one clock. Per lane-step, in the
kernels' order and with their rounding R (``round_shift``: nearest, ties away) and clamps::

    π_n = clamp(flip·π ± q)                                  nudge (echo; q = 0 in the forward)
    m   = clamp(ϕ + R(δ·π_n, δ_frac + 1))
    z   = clamp(R(w·m, w_frac) + f + b)                      nonlinear
    t   = sign(z)·(T[i] + R((T[i+1] − T[i])·r, s))           i, r: segment of |z|; T from ROM
    F   = clamp(R(a·m, a_frac) − f)  |  clamp(R(a·m, a_frac) + R(c·t, c_frac + U − S))
    π'  = clamp(π_n − R(δ·F, δ_frac));   ϕ' = clamp(m + R(δ·π', δ_frac + 1))

and in the echo the accumulators of the pair (+ minus −), each clamped to ±2^62:
MM += R(m⁺² − m⁻², g), PP += R(π_n⁺² − π_n⁻², g) then += R(π'⁺² − π'⁻², g), FM += R(f·m⁺ − f·m⁻, g)
(linear), T += t⁺ − t⁻, TM += R(t⁺m⁺ − t⁻m⁻, g), LC += G⁺ − G⁻ with G = log cosh from the integral ROM
(nonlinear). The differences of products are formed in min(2W + 1, 64) bits, which is exactly the
kernels' int64 (it wraps there only at 32-bit words, as int64 does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from echoforge.targets.emulator import kernels
from echoforge.targets.emulator.fixed import ACC_LIMIT, FormatConfig
from echoforge.targets.emulator.tables import OddTable

from .pipeline import Pipeline, literal

ACC_WIDTH = 64           # an accumulator word: ±2^62 needs 64 signed bits
# its add is split after this bit: the low part's carry chain starts at a block RAM's read data (slow
# routing), the high part's at flip-flops, so the low part is the shorter one
ACC_SPLIT = 24
PARAM_FIELDS = ("a", "delta", "w", "b", "c")


@dataclass
class Memory:
    """One simple dual-port memory (one synchronous read port, one write port)."""

    name: str
    width: int
    depth: int
    read_stage: int = 0          # the stage whose address reads it (data one stage later)
    read_address: str = ""       # Verilog expression at read_stage
    data: str = ""               # the read data's signal name
    init: str | None = None      # $readmemh file
    region: str | None = None    # register-map region the bus reaches it through (None: a ROM)
    field: int | None = None     # its field in a params / acc region (index mod 8)
    readable: bool = True        # the bus reads it (False: a copy, for one more read port)
    write: tuple[str, str, str] | None = None  # pipeline write (enable, address, data), Verilog


@dataclass
class Datapath:
    pipeline: Pipeline
    memories: list[Memory]
    last_stage: int               # the stage the counters sit in (after every write and the out beat)
    min_step_clocks: int          # a lane's next step may read its state only after this many clocks
    out_data: str                 # Verilog name of the out beat (W + 1 bits)
    out_valid: str                # whether this lane emits a beat (in the same stage)
    increments: dict[str, str] = field(default_factory=dict)  # counter → unsigned increment at last_stage


class _Builder:
    """Builds the lane-step; helpers keep one named wire per operation."""

    def __init__(self, config: FormatConfig, kind: str, lane_bits: int, osc_bits: int, table: OddTable | None,
                 fold: int = 1, cuts: frozenset = frozenset(), one_row: bool = False):
        self.c = config
        self.kind = kind
        self.w = config.word_bits
        self.lim = config.state.limit
        if self.lim != (1 << (self.w - 1)) - 1:
            raise ValueError(f"the RTL clamps to ±(2^(W−1) − 1), not ±{self.lim}")
        # a delay of ≥ 4 stages goes into a block RAM where it saves ≥ 64 flip-flops per 16 bits of width
        self.p = Pipeline(memory_delay=(4, 64), fold=fold, cuts=cuts)
        self.memories: list[Memory] = []
        self.lane_bits, self.osc_bits = lane_bits, osc_bits
        self.one_row = one_row and osc_bits > 0
        self.table = table
        seg_shift = table.seg_shift if table is not None else 1
        (self.h_shift, self.delta_shift, self.a_shift, self.w_shift, self.ct_shift, self.seg_shift,
         self.g_shift, self.acc_shift) = kernels.product_shifts(config, seg_shift)

    # ---- helpers --------------------------------------------------------------------------------

    def read(self, memory: Memory, address: str, stage: int, bits: int | None = None) -> str:
        """Read ``memory`` at the address signal's value in ``stage`` (its low ``bits``); the data is a
        signal of stage + 1."""
        self.p.boundary(stage)
        if address == "osc" and self.one_row:
            # one batch row: lane = oscillator (forward) or 2·oscillator + σ (echo), so the oscillator is the
            # lane's bits and no oscillator number runs down the pipeline beside the lane's
            echo, lane = self.p.at("echo", stage), self.p.at("lane", stage)
            memory.read_address = f"({echo} ? {lane}[{self.osc_bits}:1] : {lane}[{self.osc_bits - 1}:0])"
        else:
            memory.read_address = self.p.at(address, stage)
        memory.read_stage = stage
        if bits is not None:
            memory.read_address += f"[{bits - 1}:0]"
        memory.data = self.p.input(f"{memory.name}_rd", memory.width, stage + 1)
        self.memories.append(memory)
        return memory.data

    def round_shift(self, name: str, x: str, shift: int, stage: int) -> str:
        """R(x, shift): (x + 2^(s−1), or 2^(s−1) − 1 when x < 0) >>> s — nearest, ties away from zero."""
        if shift == 0:
            return x
        high, up = self.round_parts(name, x, shift, stage)
        return self.p.wire(name, self.p.width(x) + 1 - shift, stage, f"{{{high}}} + $signed({{1'b0, {{{up}}}}})")

    def round_into(self, name: str, stage: int, a: str, sign: str, x: str, shift: int) -> str:
        """a + R(x, shift) or a − R(x, shift) (``sign``) as one adder: R's carry is its carry-in (a − (h + c)
        = a + ~h + ~c), so the rounding costs no adder of its own. R is formed in the add's stage from x as
        it arrives there: a product carried to it whole is the DSP's own output register."""
        if shift == 0:
            return self.add(name, stage, f"{{{a}}} {sign} {{{x}}}", a, x)
        high, up = self.round_parts(f"{name}_r", x, shift, stage)
        if sign == "+":
            return self.add(name, stage, f"{{{a}}} + {{{high}}} + $signed({{1'b0, {{{up}}}}})", a, high)
        return self.add(name, stage, f"{{{a}}} + ~{{{high}}} + $signed({{1'b0, ~{{{up}}}}})", a, high)

    def round_parts(self, name: str, x: str, shift: int, stage: int) -> tuple[str, str]:
        """R(x, shift) as x >>> s (in the width of R) and the carry to add to it."""
        # (x + b) >>> s = (x >>> s) + [L + b ≥ 2^s] for L = x mod 2^s and b = 2^(s−1) (− 1 when x < 0):
        # the carry out of the low bits is L ≥ 2^(s−1) (> 2^(s−1) when x < 0), a bit test — an adder over
        # them would be s carry cells with no LUT of their own
        w = self.p.width(x)
        if shift == 1:
            carry = f"{{{x}}}[0] & ~{{{x}}}[{w - 1}]"
        else:
            carry = f"{{{x}}}[{shift - 1}] & (~{{{x}}}[{w - 1}] | (|{{{x}}}[{shift - 2}:0]))"
        up = self.p.wire(f"{name}_up", 1, stage, carry, signed=False)
        return self.p.wire(f"{name}_high", w + 1 - shift, stage, f"{{{x}}} >>> {shift}"), up

    def clamp(self, name: str, x: str, stage: int) -> tuple[str, str]:
        """(clamp(x, ±lim) in W bits, the flag that it clamped). The limit is 2^(W−1) − 1, so "above it"
        is a bit test (x not negative and a bit over W − 2 set), and so is "below −lim"."""
        w, width = self.p.width(x), self.w
        if w <= width:  # x can never exceed it
            return self.p.wire(name, width, stage, f"{{{x}}}"), self.p.wire(f"{name}_sat", 1, stage, "1'b0", signed=False)
        over = self.p.wire(f"{name}_over", 1, stage, f"~{{{x}}}[{w - 1}] & (|{{{x}}}[{w - 2}:{width - 1}])",
                           signed=False)
        # below −lim = −2^(W−1) + 1: negative, and not (every bit over W − 2 set and a low bit set) — a bit
        # test, where a compare would be a carry chain of w cells with no LUT of their own
        under = self.p.wire(f"{name}_under", 1, stage,
                            f"{{{x}}}[{w - 1}] & ~((&{{{x}}}[{w - 2}:{width - 1}]) & (|{{{x}}}[{width - 2}:0]))",
                            signed=False)
        value = self.p.wire(name, width, stage, f"{{{over}}} ? {literal(self.lim, width)} : "
                                               f"({{{under}}} ? {literal(-self.lim, width)} : {{{x}}}[{width - 1}:0])")
        return value, self.p.wire(f"{name}_sat", 1, stage, f"{{{over}}} | {{{under}}}", signed=False)

    def add(self, name: str, stage: int, expression: str, *operands: str) -> str:
        """A sum (or negation, selection) of ``operands``, wide enough never to wrap."""
        width = max(self.p.width(x) for x in operands) + max(1, (len(operands) - 1).bit_length())
        return self.p.wire(name, width, stage, expression)

    def param(self, field_name: str, stage: int, copy: int = 0) -> str:
        """Read one per-oscillator parameter in ``stage`` (available in stage + 1). Each read is a memory
        of its own (``copy``: the bus writes every copy): a parameter read again where it is used costs a
        small RAM, carrying it down the pipeline a register per bit and stage."""
        name = f"param_{field_name}" + (f"_{copy}" if copy else "")
        memory = Memory(name, self.w, 1 << self.osc_bits, init=f"param_{field_name}.hex", region="params",
                        field=PARAM_FIELDS.index(field_name), readable=not copy)
        return self.read(memory, "osc", stage)

    # ---- the step -------------------------------------------------------------------------------

    def build(self) -> Datapath:
        """The lane-step, one operation group per stage: a multiply, a rounding add, a sum, a clamp (so
        no stage chains two carry chains: what sets the clock on a small FPGA)."""
        p, w = self.p, self.w
        p.input("live", 1, 0, reset=True, signed=False)   # a lane (not a bubble) is in this stage
        p.input("echo", 1, 0, signed=False)               # mode: the ±ε pair
        p.input("sigma", 1, 0, signed=False)              # the − lane of a pair
        p.input("flip", 1, 0, signed=False)               # negate π as it is read (first step of a flip run)
        p.input("lane", self.lane_bits, 0, signed=False)
        p.input("osc", self.osc_bits, 0, signed=False)
        p.input("f", w, 0)
        p.input("q", w, 0)                                # the + nudge (0 in the forward)

        state_depth = 1 << self.lane_bits
        pi_mem = self.read(Memory("state_pi", w, state_depth, region="pi"), "lane", 0)
        delta = self.param("delta", 0)
        # nudge: π_n = clamp(flip·π ± q)
        pi_flip = p.wire("pi_flip", w, 1, f"{{flip}} ? -{{{pi_mem}}} : {{{pi_mem}}}")  # |π| ≤ lim: no overflow
        # the − lane's −q is ~q + 1, the 1 the add's carry-in (|q| ≤ lim, so ~q fits W bits): no negation adder
        q_lane = p.wire("q_lane", w, 1, "{sigma} ? ~{q} : {q}")
        nudged = self.add("pi_nudged_raw", 2, f"{{{pi_flip}}} + {{{q_lane}}} + $signed({{1'b0, {{sigma}}}})",
                          pi_flip, q_lane)
        pi_n, nudge_sat = self.clamp("pi_n", nudged, 3)
        # drift to the half step: m = clamp(ϕ + R(δ·π_n))
        d_pi = p.multiply("delta_pi", delta, pi_n, 4)
        phi_mem = self.read(Memory("state_phi", w, state_depth, region="phi"), "lane", 5)
        m_raw = self.round_into("m_raw", 6, phi_mem, "+", d_pi, self.h_shift)
        m, m_sat = self.clamp("m", m_raw, 7)
        if self.kind == "nonlinear":
            coupling, stage, extra = self._tanh_force(m, 8)
            force_sum = f"+ {{{coupling}}}"
        else:
            coupling, stage, extra = "f", 10, {}
            force_sum = "- {f}"
        # F = clamp(R(a·m) + coupling)
        a = self.param("a", stage - 3)
        a_m = p.multiply("a_m", a, m, stage - 2)
        a_m_r = self.round_shift("a_m_r", a_m, self.a_shift, stage - 1)
        force_raw = self.add("force_raw", stage, f"{{{a_m_r}}} {force_sum}", a_m_r, coupling)
        force, force_sat = self.clamp("kick_force", force_raw, stage + 1)
        # kick: π' = clamp(π_n − R(δ·F)); drift: ϕ' = clamp(m + R(δ·π'))
        s = stage + 2
        d_f = p.multiply("delta_force", self.param("delta", s - 1, copy=1), force, s)
        pi_raw = self.round_into("pi_raw", s + 2, pi_n, "-", d_f, self.delta_shift)
        pi_new, pi_sat = self.clamp("pi_new", pi_raw, s + 3)
        d_pi2 = p.multiply("delta_pi_new", self.param("delta", s + 3, copy=2), pi_new, s + 4)
        phi_raw = self.round_into("phi_raw", s + 6, m, "+", d_pi2, self.h_shift)
        phi_new, phi_sat = self.clamp("phi_new", phi_raw, s + 7)
        write_stage = s + 7
        self._write_state("state_pi", pi_new, write_stage)
        self._write_state("state_phi", phi_new, write_stage)
        # the echo's observables, + lane held one clock, differences on the − lane; each product is
        # formed in the stage before its difference, just before its accumulator add needs it (carrying
        # W-bit operands down the pipeline costs half the registers of carrying 2W-bit products)
        products = {"mm": ("m_sq", m, m), "pp_before": ("pi_n_sq", pi_n, pi_n), "pp_after": ("pi_new_sq", pi_new, pi_new)}
        if self.kind == "linear":
            products["fm"] = ("f_m", "f", m)
            plain, observable = {}, m
        else:
            products["tm"] = ("t_m", extra["t"], m)
            plain, observable = {"t": extra["t"], "lc": extra["g"]}, extra["t"]
        acc_last, acc_flags, obs, acc_reach = self._accumulate(products, plain, observable, s + 5)
        # the out beat is chosen as soon as both kinds of beat exist (ϕ' and the observable difference)
        # and leaves from registers one stage later: no output port hangs off a clamp, and whether the
        # last stage holds a beat (which `advance`, every register's enable, waits on) is one flip-flop
        out_stage = max(write_stage, p.signals[obs].stage)
        p.boundary(out_stage)
        out = p.at(p.wire("out_beat", w + 1, out_stage, f"{{echo}} ? {{{obs}}} : {{{phi_new}}}"), out_stage + 1)
        out_valid = p.at(p.wire("out_lane", 1, out_stage, "{live} & (~{echo} | {sigma})", signed=False, reset=True),
                         out_stage + 1)
        # each clamp flag is counted in its own stage (_count); the pipeline drains
        # when the last out beat has left too
        last = max(acc_last + 2, out_stage + 1)
        flags = {"state": [nudge_sat, m_sat, pi_sat, phi_sat], "force": [force_sat],
                 "preact": [extra["z_sat"]] if extra else [], "accumulator": acc_flags}
        increments = {name: self._count(name, names) for name, names in flags.items()}
        # a lane's π is read (stage 0) after its previous step wrote it back; an accumulator likewise
        folded = p.register_stage
        return Datapath(p, self.memories, folded(last), max(folded(write_stage) + 1, acc_reach), out, out_valid,
                        increments)

    def _tanh_force(self, m: str, st: int) -> tuple[str, int, dict]:
        """z, t = T(z), G(z) and R(c·t) from m (ready in stage ``st``). Returns (R(c·t), the stage it is
        ready in, {t, the stage t is ready in, G, z's clamp flag})."""
        p, w, table = self.p, self.w, self.table
        s, segments = self.seg_shift, table.values.shape[0] - 2
        weight = self.param("w", st - 1)
        bias = self.param("b", 0)
        forcing_bias = self.add("f_plus_b", 1, f"{{f}} + {{{bias}}}", "f", bias)
        w_m = p.multiply("w_m", weight, m, st)
        w_m_r = self.round_shift("w_m_r", w_m, self.w_shift, st + 1)
        z_raw = self.add("z_raw", st + 2, f"{{{w_m_r}}} + {{{forcing_bias}}}", w_m_r, forcing_bias)
        z, z_sat = self.clamp("z", z_raw, st + 3)
        st += 4
        negative = p.wire("z_negative", 1, st, f"{{{z}}} < {literal(0, w)}", signed=False)
        magnitude = p.wire("z_abs", w, st, f"{{{negative}}} ? -{{{z}}} : {{{z}}}")  # |z| ≤ lim
        st += 1
        segment = p.wire("z_segment", w, st, f"{{{magnitude}}} >>> {s}")
        clamped = p.wire("table_clamped", 1, st, f"{{{segment}}} > {literal(segments, w + 4)}", signed=False)
        index = p.wire("table_index", segments.bit_length(), st, f"{{{clamped}}} ? {segments} : {{{segment}}}",
                       signed=False)
        # r = |z| − (i << s): up to the word beyond the clamp (where T rises no more: T[i+1] − T[i] = 0)
        offset = p.wire("table_offset", w, st, f"{{{magnitude}}} - ({{{clamped}}} ? "
                                               f"{literal(segments << s, w + 4)} : ({{{segment}}} <<< {s}))")
        # within a segment r < 2^s: the rise products need only its low s bits (the rise is 0 beyond)
        offset_low = p.wire("table_offset_low", s + 1, st, f"$signed({{1'b0, {{{offset}}}[{s - 1}:0]}})")
        value_bits = int(table.values.max()).bit_length() + 1
        integral_bits = int(table.integral.max()).bit_length() + 1
        low = self.read(Memory("tanh_low", value_bits, segments + 1, init="tanh_low.hex"), index, st)
        high = self.read(Memory("tanh_high", value_bits, segments + 1, init="tanh_high.hex"), index, st)
        base = self.read(Memory("tanh_integral", integral_bits, segments + 1, init="tanh_integral.hex"), index, st)
        st += 1
        rise = p.wire("table_rise", value_bits, st, f"{{{high}}} - {{{low}}}")  # 0 ≤ rise ≤ high
        low_r = p.multiply("low_offset", low, offset, st)
        rise_r = p.multiply("rise_offset", rise, offset_low, st + 1)
        half = literal(1 << (s - 1), p.width(rise_r) + 1)
        rounded = p.wire("rise_offset_r", p.width(rise_r) + 1 - s, st + 2, f"({{{rise_r}}} + {half}) >>> {s}")
        rise_r2 = p.multiply("rise_offset_sq", rise_r, offset_low, st + 2)
        y = p.wire("tanh_magnitude", value_bits + 1, st + 3, f"{{{low}}} + {{{rounded}}}")
        t = p.wire("t", value_bits + 1, st + 4, f"{{{negative}}} ? -{{{y}}} : {{{y}}}")
        # log cosh: G = R(C[i] + T[i]·r + R(rise·r², s + 1), S)
        fine_bits = max(integral_bits, p.width(low_r), p.width(rise_r2)) + 2
        one = literal(1 << s, p.width(rise_r2) + 1)
        quadratic = p.wire("logcosh_quadratic", p.width(rise_r2) + 1 - s, st + 3, f"({{{rise_r2}}} + {one}) >>> {s + 1}")
        linear = p.wire("logcosh_linear", fine_bits, st + 3, f"{{{base}}} + {{{low_r}}}")
        fine = p.wire("logcosh_fine", fine_bits, st + 4, f"{{{linear}}} + {{{quadratic}}}")
        g = p.wire("logcosh", fine_bits, st + 5,
                   f"({{{fine}}} + {literal(1 << (self.g_shift - 1), fine_bits)}) >>> {self.g_shift}")
        c = self.param("c", st + 4)
        c_t = p.multiply("c_t", c, t, st + 5)
        coupling = self.round_shift("c_t_r", c_t, self.ct_shift, st + 6)
        return coupling, st + 7, {"t": t, "t_ready": st + 5, "g": g, "z_sat": z_sat}

    def _write_state(self, name: str, value: str, stage: int) -> None:
        memory = next(m for m in self.memories if m.name == name)
        memory.write = (self.p.at("live", stage), self.p.at("lane", stage), self.p.at(value, stage))

    def _accumulate(self, products: dict, plain: dict, observable: str, stage: int):
        """Hold the + lane's terms, form the pair's differences, add them to the accumulator memories.

        Stages: the differences (and their rounding at 32-bit words), then per term a 65-bit add split
        in two parts (low part and carry, then high part) and the clamp to ±2^62; PP adds its two terms
        one after the other, as the kernels do. Returns (last stage, clamp flags, the observable
        difference, the clocks between an accumulator's read and its write + 1)."""
        p = self.p
        diff_bits = min(2 * self.w + 1, 64)
        rows = [("mm", ["mm"]), ("pp", ["pp_before", "pp_after"])]
        rows += [("fm", ["fm"])] if "fm" in products else [("t", ["t"]), ("tm", ["tm"]), ("lc", ["lc"])]
        late = {part: 3 * k for _, parts in rows for k, part in enumerate(parts)}  # a later add's term waits
        ready = max([max(p.signals[a].stage, p.signals[b].stage) + 2 for _, a, b in products.values()]
                    + [p.signals[x].stage + 1 for x in plain.values()])
        stage = max(stage, ready)
        hold = p.wire("hold_plus", 1, stage, "{live} & ~{sigma}", signed=False)
        update = p.wire("acc_update", 1, stage, "{live} & {echo} & {sigma}", signed=False)
        terms, hold_regs = {}, []
        sources = {name: (p.multiply(product, a, b, stage + late[name] - 1), stage + late[name])
                   for name, (product, a, b) in products.items()}
        sources |= {name: (x, stage) for name, x in {**plain, "obs": observable}.items()}
        for name, (x, at) in sources.items():
            width = p.width(x)
            held = f"held_{name}"
            hold_regs.append(f"reg signed [{width - 1}:0] {held};")
            p.verilog(at, f"always @(posedge clk) if (advance && {{{hold}}}) {held} <= {{{x}}};")
            p.input(held, width, at)
            if name == "obs":
                continue
            diff = p.wire(f"{name}_diff", diff_bits if name in products else width + 1, at, f"{{{held}}} - {{{x}}}")
            terms[name] = diff
        p.text[:0] = hold_regs
        obs = p.wire("obs_diff", self.w + 1, stage, f"{{held_obs}} - {{{observable}}}")
        base = stage + 1
        if self.acc_shift:
            terms = {name: (self.round_shift(f"{name}_term", diff, self.acc_shift, base + late[name])
                            if name in products else diff)
                     for name, diff in terms.items()}
            base += 1
        flags, writes = [], []
        for row, parts in rows:
            memory = Memory(f"acc_{row}", ACC_WIDTH, 1 << (self.lane_bits - 1), region="acc",
                            field=len(writes))
            value = self.read(memory, "lane", base - 1)
            memory.read_address = _pair_of(memory.read_address, self.lane_bits)
            for k, part in enumerate(parts):
                value, flag = self._add_to_accumulator(f"acc_{row}_{k}", value, terms[part], base + 3 * k)
                flags.append(flag)
            write_stage = base + 3 * len(parts) - 1
            writes.append((memory, write_stage, value))
        last = max(stage for _, stage, _ in writes)
        for memory, write_stage, value in writes:
            memory.write = (p.at(update, write_stage), _pair_of(p.at("lane", write_stage), self.lane_bits),
                            p.at(value, write_stage))
        gated = [p.wire(f"{flag}_counted", 1, p.signals[flag].stage, f"{{{update}}} & {{{flag}}}", signed=False)
                 for flag in flags]
        return last, gated, obs, p.register_stage(last) - p.register_stage(base - 1) + 1

    def _add_to_accumulator(self, name: str, acc: str, term: str, stage: int) -> tuple[str, str]:
        """clamp(acc + term, ±2^62) over three stages: low part and its carry; high part; the clamp,
        decided from the top bits of the 65-bit sum (≥ 2^62: not negative and bit 63 or 62 set; < −2^62:
        negative and not both bits 63 and 62 set)."""
        p = self.p
        wide = ACC_WIDTH + 1
        extended = p.wire(f"{name}_term", wide, stage, f"{{{term}}}")  # sign-extended to 65 bits
        k = ACC_SPLIT
        low = p.wire(f"{name}_low", k + 1, stage, f"{{1'b0, {{{acc}}}[{k - 1}:0]}} + {{1'b0, {{{extended}}}[{k - 1}:0]}}",
                     signed=False)
        # the high parts as wires of their own, so that only they are carried to the next stage
        acc_high = p.wire(f"{name}_acc_high", ACC_WIDTH - k, stage, f"{{{acc}}}[63:{k}]")
        term_high = p.wire(f"{name}_term_high", wide - k, stage, f"{{{extended}}}[64:{k}]")
        high = p.wire(f"{name}_high", wide - k, stage + 1,
                      f"{{{acc_high}}} + {{{term_high}}} + $signed({{1'b0, {{{low}}}[{k}]}})")
        raw = p.wire(f"{name}_raw", wide, stage + 1, f"$signed({{{{{high}}}, {{{low}}}[{k - 1}:0]}})")
        # the value needs only the top bits: raw = 2^62 clamps to itself, and −2^62 is its own bound
        high = p.wire(f"{name}_high_bound", 1, stage + 2, f"~{{{raw}}}[64] & ({{{raw}}}[63] | {{{raw}}}[62])",
                      signed=False)
        under = p.wire(f"{name}_under", 1, stage + 2, f"{{{raw}}}[64] & ~({{{raw}}}[63] & {{{raw}}}[62])",
                       signed=False)
        limit = literal(ACC_LIMIT, ACC_WIDTH)
        value = p.wire(name, ACC_WIDTH, stage + 2,
                       f"{{{high}}} ? {limit} : ({{{under}}} ? {literal(-ACC_LIMIT, ACC_WIDTH)} : {{{raw}}}[63:0])")
        # the flag (a clamp that changed the value) also looks at the low bits, off the value's path
        over = p.wire(f"{name}_over", 1, stage + 2, f"{{{high}}} & ({{{raw}}}[63] | (|{{{raw}}}[61:0]))",
                      signed=False)
        return value, p.wire(f"{name}_sat", 1, stage + 2, f"{{{over}}} | {{{under}}}", signed=False)

    def _count(self, name: str, flags: list[str]) -> str:
        """The number of ``flags`` set for a real lane as the unsigned 4-bit increment the counter adds,
        each flag counted in its own stage: every lane leaves every stage once, on an `advance` (when the
        counters add), before the run ends, so the run's count is the same as if the flags were carried to
        one stage — and no flag is carried down the pipeline."""
        if not flags:
            return "4'd0"
        p = self.p
        terms = []
        for flag in flags:
            stage = p.signals[flag].stage
            counted = p.wire(f"{flag}_live", 1, stage, f"{{live}} & {{{flag}}}", signed=False)
            terms.append(f"{{3'd0, {p.at(counted, stage)}}}")
        return " + ".join(terms)


def _pair_of(lane: str, lane_bits: int) -> str:
    """An echo lane's pair (accumulator row): lane = 2·pair + σ."""
    return f"{lane}[{lane_bits - 1}:1]"


def build(config: FormatConfig, kind: str, lane_bits: int, osc_bits: int, table: OddTable | None,
          fold: int = 1, one_row: bool = False) -> Datapath:
    """The lane-step of one bank kind at ``config``'s formats, for 2^lane_bits lanes and 2^osc_bits
    oscillators; ``fold`` stages per register stage (Pipeline): the unfolded build finds the stages that
    must end one (memory reads, the out beat), the folded one is built around them. ``one_row``: the bank
    runs one batch row (its parameters are read at the lane's bits)."""
    path = _Builder(config, kind, lane_bits, osc_bits, table, one_row=one_row).build()
    if fold == 1:
        return path
    cuts = frozenset(path.pipeline.boundaries)
    return _Builder(config, kind, lane_bits, osc_bits, table, fold, cuts, one_row).build()
