/* Compiled float64 inner loops of the oscillator bank (kernels.py compiles and loads this file).

   The HRU recurrences are sequential in time; a Python step per time step costs ~100 µs, a compiled
   step a few ns. Layout: arrays are (batch, time, oscillator), the oscillator axis innermost so each
   time step streams contiguous memory; `params` is the (5, P) table of core.PARAM_NAMES
   (a, delta, w, b, c); `kind` is LINEAR or NONLINEAR. Streams (forcing, positions, momenta, nudges,
   gradients) are `stream_t`: this file is compiled once per stream type (-DSTREAM=float, double), and
   every step's arithmetic is float64 either way. The caller runs the entry points on groups of batch
   rows in threads (ctypes releases the GIL; rows are independent and a lane's arithmetic does not
   depend on its block, so the bits do not depend on the split).

   Compiled without -ffast-math and with -ffp-contract=off: every operation rounds as written (IEEE
   binary64, round to nearest), which is what the exactness properties of DESIGN §2 rest on. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef STREAM
#error "compile with -DSTREAM=float or -DSTREAM=double"
#endif
typedef STREAM stream_t;

#define INLINE static inline __attribute__((always_inline))
enum { LINEAR = 0, NONLINEAR = 1 };

/* ---------------------------------------------------------------------------------------------------
   tanh, atanh and exp(−s) made of arithmetic only, so the loops over oscillators vectorise: a call to
   libm's tanh keeps a loop scalar and costs ~20 ns. Accuracy against libm (tests/test_vecmath.py): a
   few ulp. The rational approximations are Cephes' (Moshier), the exp the classic Cody–Waite reduction
   with a Taylor polynomial. */

/* Cephes tanh.c: tanh x = x + x·x²·P(x²)/Q(x²) for |x| < 0.625. */
static const double TANH_P0 = -9.64399179425052238628e-1, TANH_P1 = -9.92877231001918586564e1,
                    TANH_P2 = -1.61468768441708447952e3;
static const double TANH_Q0 = 1.12811678491632931402e2, TANH_Q1 = 2.23548839060100448583e3,
                    TANH_Q2 = 4.84406305325125486048e3;
static const double TANH_RATIONAL = 0.625;
/* Beyond this |x|, exp(−2|x|) < 4.3e-18 and tanh x rounds to ±1. */
static const double TANH_SATURATED = 20.0;
/* Cephes atanh.c: atanh x = x + x·x²·P(x²)/Q(x²) for |x| < 0.5. */
static const double ATANH_P0 = -8.54074331929669305196e-1, ATANH_P1 = 1.20426861384072379242e1,
                    ATANH_P2 = -4.61252884198732692637e1, ATANH_P3 = 6.54566728676544377376e1,
                    ATANH_P4 = -3.09092539379866942570e1;
static const double ATANH_Q0 = -1.95638849376911654834e1, ATANH_Q1 = 1.08938092147140262656e2,
                    ATANH_Q2 = -2.49839401325893582852e2, ATANH_Q3 = 2.52006675691344555838e2,
                    ATANH_Q4 = -9.27277618139601130017e1;
/* ln 2 split so that k·LN2_HI is exact for |k| < 2^11 (Cephes exp.c); 1/ln 2 rounded. */
static const double LN2_HI = 6.93145751953125e-1, LN2_LO = 1.42860682030941723212e-6,
                    INV_LN2 = 0x1.71547652b82fep+0;
/* Taylor coefficients 1/n!, n = 0…13: for |r| ≤ ln2/2 the remainder is < 5e-18. */
static const double C0 = 1.0, C1 = 1.0, C2 = 1.0 / 2, C3 = 1.0 / 6, C4 = 1.0 / 24, C5 = 1.0 / 120,
                    C6 = 1.0 / 720, C7 = 1.0 / 5040, C8 = 1.0 / 40320, C9 = 1.0 / 362880,
                    C10 = 1.0 / 3628800, C11 = 1.0 / 39916800, C12 = 1.0 / 479001600,
                    C13 = 1.0 / 6227020800.0;

/* exp(−s) for 0 ≤ s ≤ 700. */
INLINE double exp_neg(double s) {
    double k = floor(s * INV_LN2 + 0.5);
    double r = (k * LN2_HI - s) + k * LN2_LO; /* −s + k ln2, in [−ln2/2, ln2/2] */
    double p = ((((((C13 * r + C12) * r + C11) * r + C10) * r + C9) * r + C8) * r + C7) * r + C6;
    p = (((((p * r + C5) * r + C4) * r + C3) * r + C2) * r + C1) * r + C0;
    /* 2^−k: 1023 − k (an integer in [0, 2^11)) lands in the low mantissa bits of 2^52 + (1023 − k),
       and a shift moves them into the exponent field — integer lanes, no double → int64 conversion
       (which AVX2 lacks, so it kept this loop partly scalar). */
    double biased = (1023.0 - k) + 0x1p52;
    uint64_t bits;
    memcpy(&bits, &biased, sizeof bits);
    bits <<= 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh x for |x| < 0.625. */
INLINE double tanh_rational(double x) {
    double s = x * x;
    double p = (TANH_P0 * s + TANH_P1) * s + TANH_P2;
    double q = ((s + TANH_Q0) * s + TANH_Q1) * s + TANH_Q2;
    return x + x * s * (p / q);
}

/* tanh x, any x; *e receives exp(−2 min(|x|, 20)), from which log cosh x = |x| − ln 2 + log1p(e).
   Both regimes are computed and one selected by numerator and denominator: one division. */
INLINE double tanh_e(double x, double *e) {
    double y = fabs(x);
    *e = exp_neg(2.0 * (y < TANH_SATURATED ? y : TANH_SATURATED));
    double s = x * x;
    double p = (TANH_P0 * s + TANH_P1) * s + TANH_P2;
    double q = ((s + TANH_Q0) * s + TANH_Q1) * s + TANH_Q2;
    int small = y < TANH_RATIONAL;
    double numerator = small ? x * (q + s * p) : copysign(1.0 - *e, x);
    double denominator = small ? q : 1.0 + *e;
    return numerator / denominator;
}

/* atanh x for |x| < 0.5. */
INLINE double atanh_rational(double x) {
    double s = x * x;
    double p = (((ATANH_P0 * s + ATANH_P1) * s + ATANH_P2) * s + ATANH_P3) * s + ATANH_P4;
    double q = ((((s + ATANH_Q0) * s + ATANH_Q1) * s + ATANH_Q2) * s + ATANH_Q3) * s + ATANH_Q4;
    return x + x * s * (p / q);
}

/* log(1 + e) for 0 ≤ e ≤ 1, as 2 atanh(e/(2 + e)) (the argument stays below ⅓). */
INLINE double log1p_small(double e) { return 2.0 * atanh_rational(e / (2.0 + e)); }

/* ---------------------------------------------------------------------------------------------------
   The leapfrog and its echo. */

/* ∂V/∂ϕ at position m under forcing f. */
INLINE double force(int kind, double a, double w, double b, double c, double m, double f) {
    double e;
    return kind == LINEAR ? a * m - f : a * m + c * tanh_e(w * m + f + b, &e);
}

/* A pair whose positions differ by more than this (|w·m_d|, half the distance) has its force
   difference taken directly (well conditioned there); below, from closed forms without cancellation. */
static const double FAR = 0.5;

/* Centre and half-difference of ∂V/∂ϕ at positions mc ± md, without cancellation, into out[0..1];
   out[2..4] receive (t⁺ + t⁻, t⁺ − t⁻, log cosh z⁺ − log cosh z⁻) for the nonlinear observables. Both
   regimes are computed and one selected (straight-line code vectorises); with far_possible 0 (no
   |w·md| > FAR in this step) the far regime is not computed at all. */
INLINE void force_pair(int kind, double a, double w, double b, double c, double mc, double md, double f,
                       int far_possible, double out[5]) {
    if (kind == LINEAR) {
        out[0] = a * mc - f, out[1] = a * md, out[2] = out[3] = out[4] = 0.0;
        return;
    }
    double zc = w * mc + f + b, e = w * md, ignored;
    /* u = tanh zc, v = tanh e: tanh(zc ± e) = (u ± v)/(1 ± uv), log(cosh z⁺/cosh z⁻) = 2 atanh(uv). */
    double u = tanh_e(zc, &ignored), v = tanh_rational(e);
    double uv = u * v;
    double twice_inverse = 2.0 / (1.0 - uv * uv);
    double t_sum = u * (1.0 - v * v) * twice_inverse;
    double t_diff = v * (1.0 - u * u) * twice_inverse;
    double lc_diff = 2.0 * atanh_rational(uv);
    if (far_possible) { /* far apart: the direct differences are well conditioned */
        double ep, em;
        double tp = tanh_e(zc + e, &ep), tm = tanh_e(zc - e, &em);
        double far_lc_diff = fabs(zc + e) - fabs(zc - e) + log1p_small(ep) - log1p_small(em);
        int far = fabs(e) > FAR;
        t_sum = far ? tp + tm : t_sum;
        t_diff = far ? tp - tm : t_diff;
        lc_diff = far ? far_lc_diff : lc_diff;
    }
    out[0] = a * mc + 0.5 * c * t_sum, out[1] = a * md + 0.5 * c * t_diff;
    out[2] = t_sum, out[3] = t_diff, out[4] = lc_diff;
}

/* forward: integrate every lane with the drift-kick-drift leapfrog (kick at the mid position);
   positions[b, k] is ϕ after consuming forcing[b, k]. momenta (NULL: not kept) receives π after each
   step (BPTT keeps the trajectory; RHEL does not). phi and pi (B, P) hold the start and receive the end. */
INLINE void forward_kind(int kind, const double *restrict params, int64_t nb, int64_t nt, int64_t npos,
                         const stream_t *restrict forcing, double *restrict phi, double *restrict pi,
                         stream_t *restrict positions, stream_t *restrict momenta) {
    const double *a = params, *d = params + npos, *w = params + 2 * npos, *b = params + 3 * npos,
                 *c = params + 4 * npos;
    /* Time outermost, then the rows: each row's step depends on its previous one, so the rows' steps,
       independent, are what the CPU overlaps (with few oscillators a row alone leaves it waiting on
       the force's latency). */
    for (int64_t k = 0; k < nt; k++) {
        for (int64_t bi = 0; bi < nb; bi++) {
            double *restrict ph = phi + bi * npos, *restrict pn = pi + bi * npos;
            int64_t at = (bi * nt + k) * npos;
            for (int64_t p = 0; p < npos; p++) {
                double m = ph[p] + 0.5 * d[p] * pn[p];
                double pi_next = pn[p] - d[p] * force(kind, a[p], w[p], b[p], c[p], m, forcing[at + p]);
                ph[p] = m + 0.5 * d[p] * pi_next;
                pn[p] = pi_next;
                positions[at + p] = (stream_t)ph[p];
                if (momenta) momenta[at + p] = (stream_t)pi_next;
            }
        }
    }
}

void ef_forward(int kind, const double *params, int64_t nb, int64_t nt, int64_t npos,
                const stream_t *forcing, double *phi, double *pi, stream_t *positions, stream_t *momenta) {
    if (kind == LINEAR) forward_kind(LINEAR, params, nb, nt, npos, forcing, phi, pi, positions, momenta);
    else forward_kind(NONLINEAR, params, nb, nt, npos, forcing, phi, pi, positions, momenta);
}

/* The echo works on lanes (batch row, oscillator) in blocks: a block's lanes sit in one struct holding
   the pair state, the accumulators, the parameters and this step's forcing, nudge and gradient, so the
   lane loop reads and writes fixed arrays that the compiler can prove disjoint and vectorise. A block
   stays in L1/L2; rows are STRIDE long so that no two rows are a multiple of 4 KiB apart. */
#define BLOCK 256
#define STRIDE (BLOCK + 8)
struct block {
    double pc[STRIDE], pd[STRIDE], qc[STRIDE], qd[STRIDE]; /* pair state: centre and half-difference */
    double acc[5][STRIDE];                                 /* a, δ, w, b, c */
    double par[5][STRIDE];                                 /* a, δ, w, b, c */
    double inv_w[STRIDE], grad_scale[STRIDE];              /* 1/w, and −δ/2ε */
    double f[STRIDE], nudge[STRIDE], grad[STRIDE];         /* this step's */
};

/* One echo step of the block's n lanes (see ef_echo_chunk). The observables are the differences
   (echo⁺ − echo⁻) of the half-step ∂V/∂(a, w, b, c, f) and ∂H_½/∂δ in centre/half-difference form:
   m± = mc ± md, π± = qc ± qd, so x⁺² − x⁻² = 4·centre·half-difference. */
INLINE void echo_lanes(int kind, struct block *restrict k, int64_t n, double eps, int far_possible) {
    for (int64_t j = 0; j < n; j++) {
        double a = k->par[0][j], d = k->par[1][j], w = k->par[2][j], b = k->par[3][j], c = k->par[4][j];
        double qc = k->qc[j], qd = k->qd[j], f = k->f[j];
        double mc = k->pc[j] + 0.5 * d * qc, md = k->pd[j] + 0.5 * d * qd;
        double fp[5];
        force_pair(kind, a, w, b, c, mc, md, f, far_possible, fp);
        double qc1 = qc - d * fp[0], qd1 = qd - d * fp[1];
        double kinetic = qc * qd + qc1 * qd1;
        double oa = 2.0 * mc * md, ow, ob, oc, of, od;
        if (kind == LINEAR) {
            ow = ob = oc = 0.0;
            of = -2.0 * md;
            od = 2.0 * a * mc * md - 2.0 * f * md + kinetic;
        } else {
            double inv_w = k->inv_w[j], t_sum = fp[2], t_diff = fp[3], lc_diff = fp[4];
            ob = c * t_diff * inv_w;
            oc = lc_diff * inv_w;
            ow = c * ((t_diff * mc + t_sum * md) - lc_diff * inv_w) * inv_w;
            of = ob;
            od = 2.0 * a * mc * md + c * oc + kinetic;
        }
        k->acc[0][j] += oa;
        k->acc[1][j] += od;
        k->acc[2][j] += ow;
        k->acc[3][j] += ob;
        k->acc[4][j] += oc;
        k->grad[j] = k->grad_scale[j] * of;
        k->pc[j] = mc + 0.5 * d * qc1;
        k->pd[j] = md + 0.5 * d * qd1;
        k->qc[j] = qc1;
        k->qd[j] = qd1 + eps * k->nudge[j];
    }
}

/* Whether some pair's mid positions of the next step are more than FAR apart (in w·m). */
INLINE int far_apart(const struct block *restrict k, int64_t n) {
    int64_t count = 0;
    for (int64_t j = 0; j < n; j++)
        count += fabs(k->par[2][j] * (k->pd[j] + 0.5 * k->par[1][j] * k->qd[j])) > FAR; /* a sum: vectorises */
    return count > 0;
}

/* Copy a block's lanes (rows b0…b1, oscillators p0…p1 of a (B, P) array) into a block row, or back. */
INLINE void gather(double *restrict row, const double *restrict array, int64_t b0, int64_t b1, int64_t p0,
                   int64_t p1, int64_t npos) {
    int64_t j = 0;
    for (int64_t bi = b0; bi < b1; bi++)
        for (int64_t p = p0; p < p1; p++) row[j++] = array[bi * npos + p];
}

INLINE void scatter(const double *restrict row, double *restrict array, int64_t b0, int64_t b1, int64_t p0,
                    int64_t p1, int64_t npos) {
    int64_t j = 0;
    for (int64_t bi = b0; bi < b1; bi++)
        for (int64_t p = p0; p < p1; p++) array[bi * npos + p] = row[j++];
}

/* One block of lanes through the whole chunk, latest step first. */
INLINE void echo_block(int kind, struct block *restrict k, const double *params, int64_t nb, int64_t nt,
                       int64_t npos, int64_t b0, int64_t b1, int64_t p0, int64_t p1, const stream_t *forcing,
                       const stream_t *nudges, const double *nudge_before, double eps, double *state,
                       double *acc, stream_t *grad_forcing) {
    int64_t n = (b1 - b0) * (p1 - p0), lanes = nb * npos, j;
    double *rows[4] = {k->pc, k->pd, k->qc, k->qd};
    for (int r = 0; r < 4; r++) gather(rows[r], state + r * lanes, b0, b1, p0, p1, npos);
    for (int r = 0; r < 5; r++) {
        gather(k->acc[r], acc + r * lanes, b0, b1, p0, p1, npos);
        j = 0;
        for (int64_t bi = b0; bi < b1; bi++)
            for (int64_t p = p0; p < p1; p++) k->par[r][j++] = params[r * npos + p];
    }
    j = 0;
    for (int64_t bi = b0; bi < b1; bi++)
        for (int64_t p = p0; p < p1; p++, j++) {
            k->inv_w[j] = 1.0 / params[2 * npos + p];
            k->grad_scale[j] = -params[npos + p] / (2.0 * eps);
        }
    for (int64_t t = nt - 1; t >= 0; t--) {
        j = 0;
        for (int64_t bi = b0; bi < b1; bi++)
            for (int64_t p = p0; p < p1; p++, j++) {
                k->f[j] = forcing[(bi * nt + t) * npos + p];
                k->nudge[j] = t > 0 ? nudges[(bi * nt + t - 1) * npos + p] : nudge_before[bi * npos + p];
            }
        if (kind == NONLINEAR && far_apart(k, n)) echo_lanes(kind, k, n, eps, 1);
        else echo_lanes(kind, k, n, eps, 0);
        j = 0;
        for (int64_t bi = b0; bi < b1; bi++)
            for (int64_t p = p0; p < p1; p++) grad_forcing[(bi * nt + t) * npos + p] = (stream_t)k->grad[j++];
    }
    for (int r = 0; r < 4; r++) scatter(rows[r], state + r * lanes, b0, b1, p0, p1, npos);
    for (int r = 0; r < 5; r++) scatter(k->acc[r], acc + r * lanes, b0, b1, p0, p1, npos);
}

/* Every block of at most BLOCK lanes: whole rows when a row fits, else a row in pieces. */
INLINE void echo_blocks(int kind, struct block *restrict k, const double *params, int64_t nb, int64_t nt,
                        int64_t npos, const stream_t *forcing, const stream_t *nudges,
                        const double *nudge_before, double eps, double *state, double *acc,
                        stream_t *grad_forcing) {
    if (npos >= BLOCK) {
        for (int64_t bi = 0; bi < nb; bi++)
            for (int64_t p0 = 0; p0 < npos; p0 += BLOCK)
                echo_block(kind, k, params, nb, nt, npos, bi, bi + 1, p0, p0 + BLOCK < npos ? p0 + BLOCK : npos,
                           forcing, nudges, nudge_before, eps, state, acc, grad_forcing);
    } else {
        int64_t per_block = BLOCK / npos;
        for (int64_t bi = 0; bi < nb; bi += per_block)
            echo_block(kind, k, params, nb, nt, npos, bi, bi + per_block < nb ? bi + per_block : nb, 0, npos,
                       forcing, nudges, nudge_before, eps, state, acc, grad_forcing);
    }
}

/* The ±ε echoes of RHEL (PAPER.md §2, Alg. 1) over one chunk of time, latest step first.

   The pair is carried as centre and half-difference, state = (ϕ_c, ϕ_d, π_c, π_d) each (B, P):
   x± = x_c ± x_d. The drifts are linear and the kick's difference has closed forms, so this is the same
   two trajectories without the cancellation of subtracting two nearly equal states — a nudge far below
   the state's last bit still counts. After every step the momentum half-difference gets ε·g of the step
   before it (within the chunk from `nudges`, after the chunk's first step from `nudge_before`, zero at
   the very start of the sequence). Adds the observables' differences (echo⁺ − echo⁻, rows in
   PARAM_NAMES order) to acc (5, B, P) and writes grad_forcing, already scaled by −δ/2ε. state and acc
   carry over from chunk to chunk. A step runs the far-apart formulas only when some pair needs them
   (rare: the half-difference is of order ε·g). Returns 0, or −1 when out of memory. */
int ef_echo_chunk(int kind, const double *params, int64_t nb, int64_t nt, int64_t npos, const stream_t *forcing,
                  const stream_t *nudges, const double *nudge_before, double eps, double *state, double *acc,
                  stream_t *grad_forcing) {
    struct block *k = aligned_alloc(64, sizeof(struct block));
    if (!k) return -1;
    /* Each kind gets its own copy of the loops with `kind` a constant, so they hold no branch on it. */
    if (kind == LINEAR)
        echo_blocks(LINEAR, k, params, nb, nt, npos, forcing, nudges, nudge_before, eps, state, acc, grad_forcing);
    else
        echo_blocks(NONLINEAR, k, params, nb, nt, npos, forcing, nudges, nudge_before, eps, state, acc,
                    grad_forcing);
    free(k);
    return 0;
}

/* BPTT: reverse-mode differentiation of the stored leapfrog trajectory, step by step. This is exactly
   what autograd computes through the unrolled integrator (the tests check it against torch autograd),
   compiled. Writes grad_forcing (B, L, P) and grad_params (5, B, P). Returns 0, or −1 when out of memory. */
int ef_adjoint(int kind, const double *params, int64_t nb, int64_t nt, int64_t npos, const stream_t *forcing,
               const double *phi0, const double *pi0, const stream_t *positions, const stream_t *momenta,
               const stream_t *grad_positions, stream_t *grad_forcing, double *grad_params) {
    const double *a = params, *d = params + npos, *w = params + 2 * npos, *b = params + 3 * npos,
                 *c = params + 4 * npos;
    double *l_phi = malloc(7 * npos * sizeof(double));
    if (!l_phi) return -1;
    double *l_pi = l_phi + npos, *grads = l_phi + 2 * npos; /* grads: (5, P) */
    for (int64_t bi = 0; bi < nb; bi++) {
        memset(l_phi, 0, 7 * npos * sizeof(double));
        for (int64_t k = nt - 1; k >= 0; k--) {
            int64_t at = (bi * nt + k) * npos, before = (bi * nt + k - 1) * npos;
            for (int64_t p = 0; p < npos; p++) {
                double h = 0.5 * d[p];
                double phi = k > 0 ? positions[before + p] : phi0[bi * npos + p];
                double pi = k > 0 ? momenta[before + p] : pi0[bi * npos + p];
                double f = forcing[at + p];
                double m = phi + h * pi;
                double F = force(kind, a[p], w[p], b[p], c[p], m, f);
                double pin = pi - d[p] * F;
                double l_phi1 = l_phi[p] + grad_positions[at + p];
                /* ϕ' = m + h π' */
                double l_pin = l_pi[p] + h * l_phi1;
                double l_m = l_phi1;
                double g_d = 0.5 * pin * l_phi1 - F * l_pin;
                /* π' = π − δ F(m, f) */
                double df_dm, df_df, df_dw, df_db, df_dc;
                if (kind == LINEAR) {
                    df_dm = a[p], df_df = -1.0, df_dw = df_db = df_dc = 0.0;
                } else {
                    double e, t = tanh_e(w[p] * m + f + b[p], &e);
                    double s = 1.0 - t * t;
                    df_dm = a[p] + c[p] * w[p] * s, df_df = c[p] * s;
                    df_dw = c[p] * s * m, df_db = c[p] * s, df_dc = t;
                }
                double kick = -d[p] * l_pin;
                l_m += kick * df_dm;
                grad_forcing[at + p] = (stream_t)(kick * df_df);
                grads[p] += kick * m;
                grads[2 * npos + p] += kick * df_dw;
                grads[3 * npos + p] += kick * df_db;
                grads[4 * npos + p] += kick * df_dc;
                /* m = ϕ + h π */
                grads[npos + p] += g_d + 0.5 * pi * l_m;
                l_phi[p] = l_m;
                l_pi[p] = l_pin + h * l_m;
            }
        }
        for (int r = 0; r < 5; r++) memcpy(grad_params + (r * nb + bi) * npos, grads + r * npos, npos * sizeof(double));
    }
    free(l_phi);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------
   The block's glue (glue.py): the pointwise passes between torch's matrix products and its GELU and
   sigmoid — the skip, dropout, the GLU's product and the residual — and their derivatives, one pass
   each instead of autograd's several. Rows are time steps of one batch row, `width` features each; a
   row of the incoming gradient may be a broadcast (row stride 0). */

/* Dropout's keep decision for element `index` of the global batch: a counter-based hash of (seed,
   index), two rounds of a 32-bit mixer (Wellons' lowbias32), so a mask is the same whatever chunks
   or ranks compute it and needs no stored state; kept when the hash ≥ threshold = round(p·2³²). */
INLINE uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

struct dropout { uint64_t seed; int64_t base; uint32_t threshold; stream_t scale; };

/* The factor of element j of a row block starting at global index d->base: scale if kept, else 0. */
INLINE stream_t dropout_factor(const struct dropout *d, int64_t j) {
    uint64_t i = (uint64_t)(d->base + j);
    uint32_t h = mix32(mix32((uint32_t)i ^ (uint32_t)d->seed) ^ (uint32_t)(i >> 32) ^ (uint32_t)(d->seed >> 32));
    return h >= d->threshold ? d->scale : (stream_t)0;
}

/* out = x·factor for n contiguous elements (x and out distinct). */
void ef_dropout(int64_t n, const stream_t *restrict x, stream_t *restrict out, uint64_t seed, int64_t base,
                uint32_t threshold, double scale) {
    struct dropout d = {seed, base, threshold, (stream_t)scale};
    for (int64_t j = 0; j < n; j++) out[j] = x[j] * dropout_factor(&d, j);
}

/* a ← a + D⊙u: the readout plus the skip, the GELU's input. */
void ef_glue_skip(int64_t rows, int64_t width, stream_t *restrict a, const stream_t *restrict u,
                  const stream_t *restrict skip) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < width; k++) a[r * width + k] += skip[k] * u[r * width + k];
}

/* out = x + dropout(v ⊙ s): v the first `width` of vg's 2·width columns, s = σ(g) of the rest. */
void ef_glue_glu(int64_t rows, int64_t width, const stream_t *vg, const stream_t *gate, const stream_t *x,
                 stream_t *out, uint64_t seed, int64_t base, uint32_t threshold, double scale) {
    struct dropout d = {seed, base, threshold, (stream_t)scale};
    for (int64_t r = 0; r < rows; r++) {
        const stream_t *restrict v = vg + 2 * r * width, *restrict s = gate + r * width, *xr = x + r * width;
        stream_t *o = out + r * width; /* may be x: elementwise, in place */
        for (int64_t k = 0; k < width; k++) o[k] = xr[k] + (v[k] * s[k]) * dropout_factor(&d, r * width + k);
    }
}

/* The GLU's backward: ∂L/∂[v g] from ∂L/∂out (rows `grad_stride` apart), v and s = σ(g). */
void ef_glue_glu_backward(int64_t rows, int64_t width, const stream_t *vg, const stream_t *gate,
                          const stream_t *grad, int64_t grad_stride, stream_t *grad_vg,
                          uint64_t seed, int64_t base, uint32_t threshold, double scale) {
    struct dropout d = {seed, base, threshold, (stream_t)scale};
    for (int64_t r = 0; r < rows; r++) {
        const stream_t *restrict v = vg + 2 * r * width, *restrict s = gate + r * width;
        const stream_t *restrict g = grad + r * grad_stride;
        stream_t *restrict grad_v = grad_vg + 2 * r * width, *restrict grad_g = grad_v + width;
        for (int64_t k = 0; k < width; k++) {
            stream_t upstream = g[k] * dropout_factor(&d, r * width + k);
            grad_v[k] = upstream * s[k];
            grad_g[k] = upstream * v[k] * (s[k] * (1 - s[k]));
        }
    }
}

/* The skip's backward from ∂L/∂a: ∂L/∂u = ∂L/∂a ⊙ D into grad_u, Σ_rows ∂L/∂a ⊙ u added to grad_skip
   (float64, `width` entries). */
void ef_glue_skip_backward(int64_t rows, int64_t width, const stream_t *restrict grad_a, const stream_t *restrict u,
                           const stream_t *restrict skip, stream_t *restrict grad_u, double *restrict grad_skip) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < width; k++) {
            grad_u[r * width + k] = grad_a[r * width + k] * skip[k];
            grad_skip[k] += (double)(grad_a[r * width + k] * u[r * width + k]);
        }
}

/* ---------------------------------------------------------------------------------------------------
   The block norm's statistics over (batch, time) rows (hssm.TimeBatchNorm): column sums in float64,
   two passes for the variance; and its forward and backward, one pass each. */

/* mean and (biased) variance of every column, into float64 arrays of `width`. */
void ef_column_moments(int64_t rows, int64_t width, const stream_t *restrict x, double *restrict mean,
                       double *restrict var) {
    for (int64_t k = 0; k < width; k++) mean[k] = var[k] = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < width; k++) mean[k] += x[r * width + k];
    for (int64_t k = 0; k < width; k++) mean[k] /= (double)rows;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < width; k++) {
            double d = x[r * width + k] - mean[k];
            var[k] += d * d;
        }
    for (int64_t k = 0; k < width; k++) var[k] /= (double)rows;
}

/* Σ_rows g and Σ_rows g⊙u of every column, into float64 arrays of `width`. */
void ef_column_sums(int64_t rows, int64_t width, const stream_t *restrict g, const stream_t *restrict u,
                    double *restrict sum_g, double *restrict sum_gu) {
    for (int64_t k = 0; k < width; k++) sum_g[k] = sum_gu[k] = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < width; k++) {
            sum_g[k] += g[r * width + k];
            sum_gu[k] += (double)g[r * width + k] * u[r * width + k];
        }
}

/* The forward: out = (x − mean)⊙invstd. */
void ef_standardize(int64_t rows, int64_t width, const stream_t *restrict x, const stream_t *restrict mean,
                    const stream_t *restrict invstd, stream_t *restrict out) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < width; k++) out[r * width + k] = (x[r * width + k] - mean[k]) * invstd[k];
}

/* The backward: out = (g − mean_g − u⊙projection)⊙invstd; out may be g (elementwise: in place). */
void ef_standardize_backward(int64_t rows, int64_t width, const stream_t *g, const stream_t *restrict u,
                             const stream_t *restrict mean_g, const stream_t *restrict projection,
                             const stream_t *restrict invstd, stream_t *out) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < width; k++)
            out[r * width + k] = ((g[r * width + k] - mean_g[k]) - u[r * width + k] * projection[k]) * invstd[k];
}

/* ---------------------------------------------------------------------------------------------------
   The elementary functions and the force pair over arrays, for the tests. */

void ef_tanh(int64_t n, const double *x, double *t, double *e) {
    for (int64_t i = 0; i < n; i++) t[i] = tanh_e(x[i], e + i);
}

void ef_atanh_rational(int64_t n, const double *x, double *out) {
    for (int64_t i = 0; i < n; i++) out[i] = atanh_rational(x[i]);
}

void ef_exp_neg(int64_t n, const double *s, double *out) {
    for (int64_t i = 0; i < n; i++) out[i] = exp_neg(s[i]);
}

void ef_force_pair(int kind, const double in[7], int far_possible, double out[5]) {
    force_pair(kind, in[0], in[1], in[2], in[3], in[4], in[5], in[6], far_possible, out);
}
