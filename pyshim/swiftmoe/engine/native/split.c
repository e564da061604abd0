/* The engine's split pricing in C: the plan's index, stage 1 of the split ("fast" min-max
 * amounts, the node-local and the node-balanced amounts), the amounts spread over the slots,
 * the tier sums of the routing and the step-time cost model's prices of them. Bit-identical to
 * the NumPy code it ports (swiftmoe.engine.split and swiftmoe.engine.costmodel); see smoe.h for
 * the rules.
 *
 * NumPy's semantics that matter here, reproduced below:
 * - np.bincount(idx, weights) converts the weights to float64 and adds them in index order,
 *   bin by bin, from 0.0; an integer sum through it is therefore a float sum (sum_by below);
 * - np.add.reduceat on float64 gives a segment a[s..t-1] as a[s] + pairwise(a[s+1..t-1]);
 * - np.argsort(kind="stable") of -v is the order of descending v, ties in index order, NaN last;
 * - np.maximum propagates NaN; np.argmax / np.argmin take the first index of a tie;
 * - Python's // and % floor (floordiv, floormod).
 * Every float expression keeps Python's evaluation order; build.py compiles with
 * -ffp-contract=off, so no multiply-add is fused. */
#include "smoe.h"
#include "smoe_util.h" /* imax, imin, floordiv, floormod, proportional */

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Small helpers (and smoe_util.h's). */

/* Python's -(-a // b): the ceiling of a / b. */
static int64_t ceildiv(int64_t a, int64_t b) { return -floordiv(-a, b); }

/* np.maximum of two float64: a when a >= b or a is NaN, else b. */
static double np_maximum(double a, double b) { return (a >= b || isnan(a)) ? a : b; }

/* np.maximum.reduce of a[0..n-1], n >= 1 (NaN propagates). */
static double max_reduce(const double *a, int64_t n)
{
    double m = a[0];
    for (int64_t i = 1; i < n; i++)
        m = np_maximum(m, a[i]);
    return m;
}

/* malloc of n items of size sz, never of 0 bytes (so NULL always means failure). */
static void *alloc(size_t n, size_t sz) { return malloc(n ? n * sz : 1); }

/* Does index a come before index b in np.argsort(-v, kind="stable")? (v[a] > v[b], NaN last;
 * equal keys keep index order, which the stable merge below preserves.) */
static int desc_before(const double *v, int64_t a, int64_t b)
{
    double x = v[a], y = v[b];
    return x > y || (isnan(y) && !isnan(x));
}

/* Sorts idx[0..n-1] stably by descending v[idx[i]], NaN last: np.argsort(-v, kind="stable")
 * restricted to idx (in increasing order on entry). tmp: n entries of scratch. */
static void sort_desc(int64_t *idx, int64_t n, const double *v, int64_t *tmp)
{
    if (n <= 16) {
        for (int64_t i = 1; i < n; i++) {
            int64_t t = idx[i], j = i;
            while (j > 0 && desc_before(v, t, idx[j - 1])) {
                idx[j] = idx[j - 1];
                j--;
            }
            idx[j] = t;
        }
        return;
    }
    int64_t h = n / 2;
    sort_desc(idx, h, v, tmp);
    sort_desc(idx + h, n - h, v, tmp);
    int64_t i = 0, j = h, o = 0;
    while (i < h && j < n)
        tmp[o++] = desc_before(v, idx[j], idx[i]) ? idx[j++] : idx[i++];
    while (i < h)
        tmp[o++] = idx[i++];
    while (j < n)
        tmp[o++] = idx[j++];
    memcpy(idx, tmp, (size_t)n * sizeof *idx);
}

void smoe_sort_desc(int64_t *idx, int64_t n, const double *v, int64_t *tmp)
{
    sort_desc(idx, n, v, tmp);
}

/* ---------------------------------------------------------------------------------------------
 * NumPy's pairwise summation (numpy/_core/src/umath/loops_utils.h.src, pairwise_sum_DOUBLE):
 * fewer than 8 terms summed in order from -0.0 (NumPy 2.4 starts there so that a sum of -0.0
 * stays -0.0; for any other terms it is the same as 0.0); up to 128 in 8 lanes, then the rest
 * in order; more split in two at a multiple of 8. np.add.reduceat over a[s..t-1] is
 * a[s] + smoe_pairwise_sum(a + s + 1, t - s - 1); np.add.reduce of a[0..n-1] is
 * 0.0 + smoe_pairwise_sum(a, n). */
/* smoe_pairwise_sum of fewer than 8 terms (in order from -0.0), inline where a loop calls it
 * for every expert. */
static inline double short_sum(const double *a, int64_t n)
{
    double res = -0.0;
    for (int64_t i = 0; i < n; i++)
        res += a[i];
    return res;
}

double smoe_pairwise_sum(const double *a, int64_t n)
{
    if (n < 8)
        return short_sum(a, n);
    if (n <= 128) {
        double r[8];
        int64_t i;
        for (int j = 0; j < 8; j++)
            r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++)
                r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            res += a[i];
        return res;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return smoe_pairwise_sum(a, n2) + smoe_pairwise_sum(a + n2, n - n2);
}

/* ---------------------------------------------------------------------------------------------
 * The plan's index: plan_index.PlanIndex.__init__ (the fields of smoe_plan).
 *
 * Demands are the slots in (expert, slot) order (np.argsort(slots_K, kind="stable"), a counting
 * sort here); within an expert the slots, hence their ranks, increase, so the demands are sorted
 * by the key expert * N + rank and the plan's pairs (np.unique of the keys) are the runs of equal
 * keys among them. Every array lives in one allocation, owned through pl->pair_K (freed by
 * smoe_plan_free); the [P] arrays have room for K. */
int64_t smoe_abi(void) { return SMOE_ABI; }

int smoe_plan_init(smoe_plan *pl, const int64_t *slots_K, int64_t N, int64_t S, int64_t E)
{
    memset(pl, 0, sizeof *pl);
    int64_t K = N * S;
    int64_t *blk = alloc((size_t)(12 * K + 2 * E), sizeof *blk);
    if (!blk)
        return SMOE_ENOMEM;
    pl->N = N, pl->S = S, pl->E = E, pl->K = K;
    pl->pair_K = blk;
    pl->idx_K = blk + K;
    pl->mult_K = blk + 2 * K;
    pl->d_k = blk + 3 * K;
    pl->d_r = blk + 4 * K;
    pl->d_e = blk + 5 * K;
    pl->d_pair = blk + 6 * K;
    pl->dpos_K = blk + 7 * K;
    pl->mult_P = blk + 8 * K;
    pl->e_P = blk + 9 * K;
    pl->r_P = blk + 10 * K;
    pl->d_first_P = blk + 11 * K;
    pl->deg_E = blk + 12 * K;
    pl->start_E = blk + 12 * K + E;

    /* d_k: counting sort of the slots by expert, stable (start_E holds the offsets for now). */
    int64_t *off = pl->start_E;
    memset(off, 0, (size_t)E * sizeof *off);
    for (int64_t k = 0; k < K; k++)
        off[slots_K[k]]++;
    int64_t run = 0;
    for (int64_t e = 0; e < E; e++) {
        int64_t c = off[e];
        off[e] = run;
        run += c;
    }
    for (int64_t k = 0; k < K; k++)
        pl->d_k[off[slots_K[k]]++] = k;

    /* The pairs: runs of equal (expert, rank) among the demands. */
    memset(pl->deg_E, 0, (size_t)E * sizeof *pl->deg_E);
    int64_t P = 0, prev = -1;
    for (int64_t j = 0; j < K; j++) {
        int64_t k = pl->d_k[j], e = slots_K[k], r = k / S, key = e * N + r;
        if (j == 0 || key != prev) {
            pl->e_P[P] = e;
            pl->r_P[P] = r;
            pl->d_first_P[P] = j;
            pl->mult_P[P] = 0;
            pl->deg_E[e]++;
            P++;
            prev = key;
        }
        int64_t p = P - 1;
        pl->d_e[j] = e;
        pl->d_r[j] = r;
        pl->d_pair[j] = p;
        pl->dpos_K[k] = j;
        pl->pair_K[k] = p;
        pl->idx_K[k] = j - pl->d_first_P[p];
        pl->mult_P[p]++;
    }
    pl->P = P;
    int all = 1;
    run = 0;
    for (int64_t e = 0; e < E; e++) {
        pl->start_E[e] = run;
        run += pl->deg_E[e];
        if (pl->deg_E[e] == 0)
            all = 0;
    }
    pl->all_held = all;
    for (int64_t k = 0; k < K; k++)
        pl->mult_K[k] = pl->mult_P[pl->pair_K[k]];
    return 0;
}

/* Frees what smoe_plan_init allocated (one block, through pair_K); a zeroed plan is fine. */
void smoe_plan_free(smoe_plan *pl)
{
    free(pl->pair_K);
    memset(pl, 0, sizeof *pl);
}

/* plan_index.local_tokens: counts[r, e] of pair p = (e, r). */
static int64_t local_tok(const int64_t *c_QE, const smoe_plan *pl, int64_t p)
{
    return c_QE[pl->r_P[p] * pl->E + pl->e_P[p]];
}

int64_t smoe_row_sum(const int64_t *c_QE, int64_t q, int64_t E)
{
    int64_t row = 0;
    for (int64_t e = 0; e < E; e++)
        row += c_QE[q * E + e];
    return row;
}

/* ---------------------------------------------------------------------------------------------
 * The cost model (costmodel.py). */

/* CostParams.nodes: ceil(N / G), 1 when G is 0 or >= N. */
int64_t smoe_nodes(const smoe_cost *p)
{
    int64_t G = p->ranks_per_node;
    if (G == 0 || G >= p->ranks)
        return 1;
    return ceildiv(p->ranks, G);
}

/* CostParams.prices_compute. */
int smoe_prices_compute(const smoe_cost *p)
{
    return p->flops_per_token > 0 && p->flops_per_s > 0;
}

/* CostParams.prices_network. */
int smoe_prices_network(const smoe_cost *p) { return p->intra_bw > 0 || p->inter_bw > 0; }

/* costmodel.compute_ms, given float(load_R.max()). */
double smoe_compute_ms(const smoe_cost *p, double max_load)
{
    if (!smoe_prices_compute(p) || p->ranks <= 0)
        return 0.0;
    return 1e3 * p->flops_per_token * max_load / p->flops_per_s;
}

/* costmodel.a2a_ms (with _tiers_ms and _over): 4 * 1e3 * max_r max(t_intra, t_inter). */
double smoe_a2a_ms(const smoe_cost *p, const int64_t *si, const int64_t *ri, const int64_t *se,
                   const int64_t *re)
{
    double t = 0.0;
    for (int64_t r = 0; r < p->ranks; r++) {
        double intra = 0.0, inter = 0.0;
        if (p->intra_bw > 0)
            intra = np_maximum((double)si[r], (double)ri[r]) * p->token_bytes / p->intra_bw;
        if (p->inter_bw > 0)
            inter = np_maximum((double)se[r], (double)re[r]) * p->token_bytes / p->inter_bw;
        double m = np_maximum(intra, inter);
        t = r == 0 ? m : np_maximum(t, m);
    }
    return 4.0 * 1e3 * t;
}

/* ---------------------------------------------------------------------------------------------
 * Stage 1 (amounts.py). */

/* amounts.lower_bound: the mean, any expert over its ranks, the forced loads (a float bincount,
 * as NumPy sums it). forced: N doubles of scratch. */
static int64_t lower_bound(const smoe_plan *pl, const int64_t *L_E, double *forced)
{
    int64_t N = pl->N, total = 0;
    for (int64_t e = 0; e < pl->E; e++)
        total += L_E[e];
    int64_t lb = ceildiv(total, N);
    for (int64_t e = 0; e < pl->E; e++)
        if (pl->deg_E[e] > 0)
            lb = imax(lb, ceildiv(L_E[e], pl->deg_E[e]));
    int any = 0;
    for (int64_t r = 0; r < N; r++)
        forced[r] = 0.0;
    for (int64_t p = 0; p < pl->P; p++) {
        int64_t e = pl->e_P[p];
        if (pl->deg_E[e] == 1) {
            forced[pl->r_P[p]] += (double)L_E[e];
            any = 1;
        }
    }
    if (any)
        lb = imax(lb, (int64_t)max_reduce(forced, N));
    return lb;
}

/* amounts.round_amounts: floors plus the largest remainders (descending, ties in pair order)
 * of each expert, into out [P]. */
static int round_amounts(const smoe_plan *pl, const int64_t *L_E, const double *x_P,
                         int64_t *out)
{
    int64_t P = pl->P, E = pl->E;
    double *dbl = alloc((size_t)(P + E), sizeof *dbl);
    int64_t *ib = alloc((size_t)(2 * P + E), sizeof *ib);
    if (!dbl || !ib) {
        free(dbl);
        free(ib);
        return SMOE_ENOMEM;
    }
    double *frac = dbl, *sum_E = dbl + P;
    int64_t *idx = ib, *tmp = ib + P, *rem = ib + 2 * P;
    for (int64_t e = 0; e < E; e++)
        sum_E[e] = 0.0;
    for (int64_t p = 0; p < P; p++) {
        out[p] = (int64_t)floor(x_P[p]);
        sum_E[pl->e_P[p]] += (double)out[p];
    }
    for (int64_t e = 0; e < E; e++)
        rem[e] = L_E[e] - (int64_t)sum_E[e];
    for (int64_t p = 0; p < P; p++) {
        frac[p] = x_P[p] - (double)out[p];
        idx[p] = p;
    }
    for (int64_t e = 0; e < E; e++) {
        int64_t s = pl->start_E[e], d = pl->deg_E[e];
        if (d == 0)
            continue;
        sort_desc(idx + s, d, frac, tmp);
        for (int64_t i = 0; i < d; i++)
            out[idx[s + i]] += i < rem[e];
    }
    free(dbl);
    free(ib);
    return 0;
}

/* amounts.repair: moves tokens off ranks above target to replicas on less loaded ranks, at most
 * budget moves, in place on x_P [P]. */
static int repair(const smoe_plan *pl, int64_t *x_P, int64_t target, int64_t budget)
{
    int64_t N = pl->N, P = pl->P;
    double *acc = alloc((size_t)N, sizeof *acc);
    int64_t *ib = alloc((size_t)(N + P + N + 1), sizeof *ib);
    if (!acc || !ib) {
        free(acc);
        free(ib);
        return SMOE_ENOMEM;
    }
    int64_t *y = ib, *by_rank = ib + N, *first = ib + N + P;
    for (int64_t r = 0; r < N; r++)
        acc[r] = 0.0;
    for (int64_t p = 0; p < P; p++)
        acc[pl->r_P[p]] += (double)x_P[p];
    int64_t ymax = 0;
    for (int64_t r = 0; r < N; r++) {
        y[r] = (int64_t)acc[r];
        ymax = r == 0 ? y[r] : imax(ymax, y[r]);
    }
    free(acc);
    if (N == 0 || ymax <= target) {
        free(ib);
        return 0;
    }
    /* The pairs of each rank, in pair order (a stable counting sort by rank). */
    for (int64_t r = 0; r <= N; r++)
        first[r] = 0;
    for (int64_t p = 0; p < P; p++)
        first[pl->r_P[p] + 1]++;
    for (int64_t r = 0; r < N; r++)
        first[r + 1] += first[r];
    for (int64_t p = 0; p < P; p++)
        by_rank[first[pl->r_P[p]]++] = p;
    for (int64_t r = N; r > 0; r--)
        first[r] = first[r - 1];
    first[0] = 0;

    for (int64_t it = 0; it < budget; it++) {
        int64_t r = 0;
        for (int64_t i = 1; i < N; i++)
            if (y[i] > y[r])
                r = i;
        if (y[r] <= target)
            break;
        int found = 0;
        int64_t best_y = 0, best_p = 0, best_q = 0;
        for (int64_t i = first[r]; i < first[r + 1]; i++) {
            int64_t p = by_rank[i];
            if (x_P[p] <= 0)
                continue;
            int64_t e = pl->e_P[p], s = pl->start_E[e], d = pl->deg_E[e];
            int64_t j = s;
            for (int64_t q = s + 1; q < s + d; q++)
                if (y[pl->r_P[q]] < y[pl->r_P[j]])
                    j = q;
            int64_t ys = y[pl->r_P[j]];
            if (ys <= y[r] - 2 && (!found || ys < best_y)) {
                found = 1;
                best_y = ys, best_p = p, best_q = j;
            }
        }
        if (!found)
            break;
        int64_t move = imin(imin(x_P[best_p], (y[r] - best_y) / 2), y[r] - target);
        move = imax(move, 1);
        x_P[best_p] -= move;
        x_P[best_q] += move;
        y[r] -= move;
        y[pl->r_P[best_q]] += move;
    }
    free(ib);
    return 0;
}

/* amounts.level_bound: the best level set of the loads y_R [N]. conf: N doubles, order/tmp/pos:
 * N int64 each, of scratch. */
static int64_t level_bound(const smoe_plan *pl, const int64_t *L_E, const double *y_R,
                           double *conf, int64_t *order, int64_t *tmp, int64_t *pos)
{
    int64_t N = pl->N;
    for (int64_t r = 0; r < N; r++)
        order[r] = r;
    sort_desc(order, N, y_R, tmp);
    for (int64_t i = 0; i < N; i++) {
        pos[order[i]] = i;
        conf[i] = 0.0;
    }
    for (int64_t e = 0; e < pl->E; e++) {
        int64_t s = pl->start_E[e], d = pl->deg_E[e];
        if (d == 0)
            continue;
        int64_t m = pos[pl->r_P[s]];
        for (int64_t p = s + 1; p < s + d; p++)
            m = imax(m, pos[pl->r_P[p]]);
        conf[m] += (double)L_E[e];
    }
    int64_t best = 0;
    for (int64_t i = 0; i < N; i++) {
        if (i > 0)
            conf[i] = conf[i - 1] + conf[i];
        int64_t v = floordiv((int64_t)conf[i] + (i + 1) - 1, i + 1);
        best = i == 0 ? v : imax(best, v);
    }
    return best;
}

#define FAST_MAX_ITERS 32
#define FAST_FIRST_CHECK 7
#define FAST_CHECK_EVERY 4
#define FAST_TOL 7.5e-3

/* amounts.amounts_fast: proportional rank scaling with momentum from the local-first
 * assignment, the best round rounded (round_amounts) and repaired (repair), into x_P [P]. */
int smoe_amounts_fast(const int64_t *c_QE, const smoe_plan *pl, const int64_t *L_E, int64_t *x_P)
{
    int64_t P = pl->P, N = pl->N, E = pl->E;
    if (P == 0)
        return 0;
    double *dbl = alloc((size_t)(5 * P + 2 * E + 4 * N), sizeof *dbl);
    int64_t *ib = alloc((size_t)(3 * N), sizeof *ib);
    if (!dbl || !ib) {
        free(dbl);
        free(ib);
        return SMOE_ENOMEM;
    }
    double *local = dbl, *prior = dbl + P, *a = dbl + 2 * P, *xb[2] = {dbl + 3 * P, dbl + 4 * P};
    double *L_f = dbl + 5 * P, *q_E = L_f + E, *y = q_E + E, *w = y + N, *g = w + N, *nb = g + N;
    const int64_t *e_P = pl->e_P, *r_P = pl->r_P;

    for (int64_t e = 0; e < E; e++) {
        L_f[e] = (double)L_E[e];
        q_E[e] = 0.0;
    }
    for (int64_t p = 0; p < P; p++) {
        local[p] = (double)local_tok(c_QE, pl, p);
        q_E[e_P[p]] += local[p]; /* bincount(e_P, local_P) */
    }
    for (int64_t e = 0; e < E; e++)
        q_E[e] = L_f[e] - q_E[e]; /* rest_E */
    for (int64_t p = 0; p < P; p++) {
        int64_t e = e_P[p];
        double deg_f = (double)imax(pl->deg_E[e], 1);
        prior[p] = local[p] + q_E[e] / deg_f + 1e-6 * (1.0 + L_f[e]);
    }
    int64_t lb = lower_bound(pl, L_E, nb);
    double unit = 1.0 / (double)imax(lb, 1);
    for (int64_t r = 0; r < N; r++)
        w[r] = 1.0, g[r] = 1.0;
    double best_hi = INFINITY;
    int best = -1, cur = 0;
    for (int it = 0; it < FAST_MAX_ITERS; it++) {
        for (int64_t p = 0; p < P; p++)
            a[p] = w[r_P[p]] * prior[p];
        if (pl->all_held) { /* np.add.reduceat(a_P, start_E) */
            for (int64_t e = 0; e < E; e++) {
                int64_t s = pl->start_E[e], n = pl->deg_E[e] - 1;
                q_E[e] = L_f[e] / (a[s] + (n < 8 ? short_sum(a + s + 1, n)
                                                 : smoe_pairwise_sum(a + s + 1, n)));
            }
        } else { /* np.bincount(e_P, a_P), at least 1e-300 */
            for (int64_t e = 0; e < E; e++)
                q_E[e] = 0.0;
            for (int64_t p = 0; p < P; p++)
                q_E[e_P[p]] += a[p];
            for (int64_t e = 0; e < E; e++)
                q_E[e] = L_f[e] / np_maximum(q_E[e], 1e-300);
        }
        double *x = xb[cur];
        for (int64_t r = 0; r < N; r++)
            y[r] = 0.0;
        for (int64_t p = 0; p < P; p++) {
            x[p] = q_E[e_P[p]] * a[p];
            y[r_P[p]] += x[p];
        }
        double hi = max_reduce(y, N);
        if (hi < best_hi) {
            best_hi = hi;
            best = cur;
            cur ^= 1;
            if (best_hi <= (double)lb * (1.0 + FAST_TOL) + 0.5)
                break;
            if (it >= FAST_FIRST_CHECK && it % FAST_CHECK_EVERY == FAST_CHECK_EVERY - 1) {
                lb = imax(lb, level_bound(pl, L_E, y, nb, ib, ib + N, ib + 2 * N));
                if (best_hi <= (double)lb * (1.0 + FAST_TOL) + 0.5)
                    break;
            }
        }
        for (int64_t r = 0; r < N; r++) {
            double yr = y[r] * unit;
            yr += 1e-12;
            g[r] /= yr;
            g[r] = sqrt(g[r]);
            g[r] /= yr;
            w[r] *= g[r];
        }
        if (it % 8 == 7) { /* keep the weights in range */
            double mw = max_reduce(w, N);
            for (int64_t r = 0; r < N; r++)
                w[r] = np_maximum(w[r] / mw, 1e-250);
            double mg = max_reduce(g, N);
            for (int64_t r = 0; r < N; r++)
                g[r] /= mg;
        }
    }
    int rc = SMOE_EBUG; /* no round was finite: the NumPy code fails too */
    if (best >= 0) {
        int64_t target = imax(lb, (int64_t)ceil(best_hi - 1e-6));
        rc = round_amounts(pl, L_E, xb[best], x_P);
        if (rc == 0)
            rc = repair(pl, x_P, target, 4 * N + 16);
    }
    free(dbl);
    free(ib);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Node-local stage 1 (priced.py). */

/* priced.amounts_node_local: pair (e, r) takes its rank's tokens, an equal share of what its
 * node's other ranks send e, and an equal share of what nodes without a replica send e; rounded
 * with round_amounts. Groups (expert, node) are runs of pairs (pairs run by expert, then rank),
 * so their float bincounts are the runs' sums in pair order; groups without a pair add +0.0 to
 * held_d_E, which changes nothing, and are skipped. rpn must be in 1..N-1
 * (SMOE_EUNSUPPORTED otherwise, where the NumPy code raises ValueError). */
int smoe_amounts_node_local(const int64_t *c_QE, const smoe_plan *pl, const int64_t *L_E,
                            int64_t rpn, int64_t *x_P)
{
    int64_t P = pl->P, N = pl->N, E = pl->E, G = rpn;
    if (!(0 < G && G < N))
        return SMOE_EUNSUPPORTED;
    if (P == 0)
        return 0;
    double *x = alloc((size_t)P, sizeof *x);
    if (!x)
        return SMOE_ENOMEM;
    for (int64_t e = 0; e < E; e++) {
        int64_t s = pl->start_E[e], t = s + pl->deg_E[e];
        if (s == t)
            continue;
        double held_d = 0.0;
        for (int64_t i = s; i < t;) {
            int64_t m = pl->r_P[i] / G, j = i;
            double loc = 0.0;
            for (; j < t && pl->r_P[j] / G == m; j++)
                loc += (double)local_tok(c_QE, pl, j);
            int64_t dsum = 0;
            for (int64_t q = m * G; q < imin(m * G + G, N); q++)
                dsum += c_QE[q * E + e];
            double d = (double)dsum;
            held_d += d;
            double node_rest = (d - loc) / (double)(j - i);
            for (int64_t p = i; p < j; p++)
                x[p] = (double)local_tok(c_QE, pl, p) + node_rest;
            i = j;
        }
        double tail = ((double)L_E[e] - held_d) / (double)imax(pl->deg_E[e], 1);
        for (int64_t p = s; p < t; p++)
            x[p] = np_maximum(x[p] + tail, 0.0);
    }
    int rc = round_amounts(pl, L_E, x, x_P);
    free(x);
    return rc;
}

/* priced.amounts_node_balanced: the node-local amounts (smoe_amounts_node_local) into x_P, then
 * each node's amounts of each expert re-split in place over the node's replicas by
 * smoe_amounts_fast on the node's own plan (plan_index.node_plans: its slots alone, the experts
 * it holds renamed 0.. in ascending order, its sources' rows of those experts' counts, T[., m]
 * as the totals); a node already within FAST_TOL of its lower bound keeps its node-local
 * amounts. A node's pairs are the plan's pairs on its ranks, in pair order, and its own plan's
 * pairs are the same in the same order (pairs run by expert, then rank, and the renaming keeps
 * the order); a node reads and writes its own pairs only. SMOE_EUNSUPPORTED unless
 * 0 < rpn < N. */
int smoe_amounts_node_balanced(const int64_t *c_QE, const smoe_plan *pl, const int64_t *L_E,
                               int64_t rpn, int64_t *x_P)
{
    int64_t P = pl->P, N = pl->N, E = pl->E, S = pl->S, G = rpn;
    int rc = smoe_amounts_node_local(c_QE, pl, L_E, rpn, x_P);
    if (rc || P == 0)
        return rc;
    /* A node has at most G*S slots, pairs and experts: its slots, the experts' new names, the
     * experts, their totals, its sources' counts of them, its pairs and their amounts. */
    int64_t GS = G * S, M = (N + G - 1) / G;
    int64_t *ib = alloc((size_t)(GS + E + 2 * GS + G * GS + 2 * GS + G + P + M + 1), sizeof *ib);
    double *forced = alloc((size_t)G, sizeof *forced);
    if (!ib || !forced) {
        free(ib);
        free(forced);
        return SMOE_ENOMEM;
    }
    int64_t *slots = ib, *local = slots + GS, *held = local + E, *T_E = held + GS,
            *c_sub = T_E + GS, *pairs = c_sub + G * GS, *xn = pairs + GS, *y = xn + GS;
    /* The pairs grouped by node, in pair order within a node (a counting sort): node m's are
     * by_node[at[m] .. at[m+1]). */
    int64_t *by_node = y + G, *at = by_node + P;
    for (int64_t m = 0; m <= M; m++)
        at[m] = 0;
    for (int64_t p = 0; p < P; p++)
        at[pl->r_P[p] / G + 1]++;
    for (int64_t m = 0; m < M; m++)
        at[m + 1] += at[m];
    for (int64_t p = 0; p < P; p++)
        by_node[at[pl->r_P[p] / G]++] = p;
    for (int64_t m = M; m > 0; m--) /* at[m] was advanced to at[m+1]: shift back */
        at[m] = at[m - 1];
    at[0] = 0;
    for (int64_t lo = 0; lo < N && rc == 0; lo += G) {
        int64_t hi = imin(lo + G, N), n = 0, h = 0, m = lo / G;
        /* The node's pairs in pair order; its experts, ascending, as they first appear. */
        for (int64_t i = at[m]; i < at[m + 1]; i++) {
            int64_t p = by_node[i];
            int64_t e = pl->e_P[p];
            if (h == 0 || held[h - 1] != e) {
                local[e] = h;
                T_E[h] = 0;
                held[h++] = e;
            }
            T_E[h - 1] += x_P[p];
            pairs[n++] = p;
        }
        if (n == 0)
            continue;
        for (int64_t k = lo * S; k < hi * S; k++)
            slots[k - lo * S] = local[pl->d_e[pl->dpos_K[k]]];
        for (int64_t q = lo; q < hi; q++)
            for (int64_t j = 0; j < h; j++)
                c_sub[(q - lo) * h + j] = c_QE[q * E + held[j]];
        smoe_plan sub;
        if ((rc = smoe_plan_init(&sub, slots, hi - lo, S, h)) != 0)
            break;
        if (sub.P != n) {
            rc = SMOE_EBUG;
            smoe_plan_free(&sub);
            break;
        }
        /* A node whose busiest rank is already within FAST_TOL of the lower bound keeps its
         * amounts. */
        for (int64_t q = 0; q < hi - lo; q++)
            y[q] = 0;
        int64_t y_max = 0;
        for (int64_t j = 0; j < n; j++)
            y[pl->r_P[pairs[j]] - lo] += x_P[pairs[j]];
        for (int64_t q = 0; q < hi - lo; q++)
            y_max = q == 0 ? y[q] : imax(y_max, y[q]);
        int keep = (double)y_max <= (double)lower_bound(&sub, T_E, forced) * (1.0 + FAST_TOL) + 0.5;
        if (!keep)
            rc = smoe_amounts_fast(c_sub, &sub, T_E, xn);
        smoe_plan_free(&sub);
        for (int64_t j = 0; j < n && rc == 0 && !keep; j++)
            x_P[pairs[j]] = xn[j];
    }
    free(ib);
    free(forced);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Slot demand (demand.py). */

/* demand.slot_demand: pair amounts spread evenly over the pair's slots, earlier slots first. */
void smoe_slot_demand(const smoe_plan *pl, const int64_t *x_P, int64_t *demand_K)
{
    for (int64_t k = 0; k < pl->K; k++) {
        int64_t x = x_P[pl->pair_K[k]], m = pl->mult_K[k];
        demand_K[k] = floordiv(x, m) + (pl->idx_K[k] < floormod(x, m));
    }
}

/* ---------------------------------------------------------------------------------------------
 * Tier sums (tiers.py). */

/* tiers.tier_sums (with tier_amounts, node_groups' groups and check_routed): sums [4*N], si,
 * ri, se, re, the tokens each rank sends to / receives from other ranks of its node and other
 * nodes. The local tier fills each pair's slots with its rank's tokens; the node tier (with
 * 0 < rpn < N) matches, group (expert, node) by group in demand order, what is left of the
 * node's ranks' tokens and of its demands in proportion; the rest is the last tier. Per-rank
 * sums are float bincounts in NumPy (tiers._sum_by) and integer sums here, the same numbers (see
 * below). SMOE_EBUG when the last tier's supplies and demands differ (check_routed). */
int smoe_tier_sums(const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
                   const int64_t *demand_K, int64_t rpn, int64_t *sums)
{
    int64_t N = pl->N, E = pl->E, K = pl->K, P = pl->P;
    int node = 0 < rpn && rpn < N;
    int64_t T = node ? rpn : 0;
    int64_t *acc = alloc((size_t)(4 * N), sizeof *acc);
    int64_t *ib = alloc((size_t)(2 * K + P + 3 * T), sizeof *ib);
    unsigned char *frac = alloc((size_t)(K > T ? K : T), 1);
    if (!acc || !ib || !frac) {
        free(acc);
        free(ib);
        free(frac);
        return SMOE_ENOMEM;
    }
    /* NumPy sums these per rank as floats (tiers._sum_by); every term and partial sum is a
     * token count, an integer far below 2^53, so each float addition is exact and the integer
     * sums here are the same numbers, in any order. */
    int64_t *si_d = acc, *ri_d = acc + N, *cut_d = acc + 2 * N, *left_d = acc + 3 * N;
    int64_t *da = ib, *use_D = ib + K, *took_P = ib + 2 * K;
    int64_t *sa = took_P + P, *cut = sa + T, *use_S = cut + T;
    for (int64_t i = 0; i < 4 * N; i++)
        acc[i] = 0;

    /* Local tier: pair (e, r)'s tokens counts[r, e] fill r's slots of e in slot order. */
    for (int64_t p = 0; p < P; p++) {
        int64_t loc = local_tok(c_QE, pl, p), before = 0, took = 0;
        int64_t f = pl->d_first_P[p];
        for (int64_t j = f; j < f + pl->mult_P[p]; j++) {
            int64_t dj = demand_K[pl->d_k[j]];
            int64_t t = imin(imax(loc - before, 0), dj); /* np.clip(a, 0, da) */
            before += dj;
            da[j] = dj - t;
            took += t;
        }
        took_P[p] = took;
    }
    if (!node) {
        for (int64_t p = 0; p < P; p++)
            cut_d[pl->r_P[p]] += took_P[p];
    } else {
        /* Node tier: groups (expert, node) holding a slot are runs of demands [f, l]; supplies
         * are the node's ranks q0..q1-1, less what the local tier took from pair (e, q) where q
         * holds e (the group's pairs, in rank order). */
        for (int64_t f = 0; f < K;) {
            int64_t e = pl->d_e[f], nd = pl->d_r[f] / rpn, l = f, q0 = nd * rpn;
            /* An expert's demands run by rank: the group ends at the node's last rank. */
            while (l + 1 < K && pl->d_e[l + 1] == e && pl->d_r[l + 1] < q0 + rpn)
                l++;
            int64_t nq = imin(q0 + rpn, N) - q0;
            int64_t pp = pl->d_pair[f], p_last = pl->d_pair[l], stot = 0, dtot = 0;
            for (int64_t i = 0; i < nq; i++) {
                cut[i] = 0;
                if (pp <= p_last && pl->r_P[pp] == q0 + i)
                    cut[i] = took_P[pp++];
                sa[i] = c_QE[(q0 + i) * E + e] - cut[i];
                stot += sa[i];
            }
            for (int64_t j = f; j <= l; j++)
                dtot += da[j];
            int64_t m = imin(stot, dtot);
            proportional(sa, nq, stot, m, use_S, frac);
            proportional(da + f, l - f + 1, dtot, m, use_D + f, frac);
            for (int64_t i = 0; i < nq; i++) {
                si_d[q0 + i] += use_S[i];
                cut_d[q0 + i] += cut[i] + use_S[i];
            }
            for (int64_t j = f; j <= l; j++) {
                ri_d[pl->d_r[j]] += use_D[j];
                da[j] -= use_D[j];
            }
            f = l + 1;
        }
    }
    int64_t left_sum = 0, da_sum = 0;
    for (int64_t j = 0; j < K; j++) {
        left_d[pl->d_r[j]] += da[j];
        da_sum += da[j];
    }
    int64_t *si = sums, *ri = sums + N, *se = sums + 2 * N, *re = sums + 3 * N;
    for (int64_t q = 0; q < N; q++) {
        int64_t row = row_Q ? row_Q[q] : smoe_row_sum(c_QE, q, E);
        int64_t left_Q = row - cut_d[q], left_R = left_d[q];
        left_sum += left_Q;
        if (node) {
            si[q] = si_d[q];
            ri[q] = ri_d[q];
            se[q] = left_Q;
            re[q] = left_R;
        } else { /* one node: the last tier stays in it */
            si[q] = left_Q;
            ri[q] = left_R;
            se[q] = 0;
            re[q] = 0;
        }
    }
    free(acc);
    free(ib);
    free(frac);
    return left_sum == da_sum ? 0 : SMOE_EBUG;
}

/* ---------------------------------------------------------------------------------------------
 * Pricing (priced.py) and the priced split (demand.py). */

/* The largest of the ranks' loads (demand_K summed over each rank's slots), as a float. */
static double max_load(const smoe_plan *pl, const int64_t *demand_K)
{
    int64_t best = 0;
    for (int64_t r = 0; r < pl->N; r++) {
        int64_t l = 0;
        for (int64_t s = 0; s < pl->S; s++)
            l += demand_K[r * pl->S + s];
        best = r == 0 ? l : imax(best, l);
    }
    return (double)best;
}

/* priced.price: compute_ms of the busiest rank plus a2a_ms of the tier sums (into sums). */
int smoe_price(const smoe_cost *p, const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
               const int64_t *demand_K, int64_t rpn, double *ms, int64_t *sums)
{
    int rc = smoe_tier_sums(c_QE, row_Q, pl, demand_K, rpn, sums);
    if (rc)
        return rc;
    int64_t N = pl->N;
    *ms = smoe_compute_ms(p, max_load(pl, demand_K)) +
          smoe_a2a_ms(p, sums, sums + N, sums + 2 * N, sums + 3 * N);
    return 0;
}

/* priced.prices_split: is stage 1 chosen by the cost model (1) or not (0)? The caller has
 * checked that p is of this job (ranks) and of the split's node grouping. */
int smoe_prices_split(const smoe_cost *p, const smoe_plan *pl, int64_t rpn)
{
    (void)rpn; /* the grouping equals p's (checked by the caller) */
    if (!p)
        return 0;
    int64_t max_deg = 0;
    for (int64_t e = 0; e < pl->E; e++)
        max_deg = imax(max_deg, pl->deg_E[e]);
    return smoe_nodes(p) > 1 && smoe_prices_compute(p) && p->inter_bw > 0 &&
           p->token_bytes > 0 && pl->E > 0 && max_deg > 1;
}

/* priced.cheaper_demand: demand_K (the min-max split's) or the node-balanced amounts' demand,
 * whichever the cost model prices lower (ties, and equal demands, keep demand_K), with its ms
 * and sums. */
static int cheaper_demand(const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
                          const int64_t *L_E, int64_t rpn, const smoe_cost *p, int64_t *demand_K,
                          double *ms, int64_t *sums, int *node_local)
{
    int64_t K = pl->K, N = pl->N;
    int64_t *ib = alloc((size_t)(pl->P + K + 4 * N), sizeof *ib);
    if (!ib)
        return SMOE_ENOMEM;
    int64_t *x_P = ib, *local_K = ib + pl->P, *loc_sums = local_K + K;
    int rc = smoe_amounts_node_balanced(c_QE, pl, L_E, rpn, x_P);
    if (rc)
        goto out;
    smoe_slot_demand(pl, x_P, local_K);
    double mm_ms;
    rc = smoe_price(p, c_QE, row_Q, pl, demand_K, rpn, &mm_ms, sums);
    if (rc)
        goto out;
    *ms = mm_ms;
    if (memcmp(local_K, demand_K, (size_t)K * sizeof *local_K) == 0)
        goto out;
    /* The node-balanced split's compute alone bounds its price from below. */
    if (smoe_compute_ms(p, max_load(pl, local_K)) >= mm_ms)
        goto out;
    double loc_ms;
    rc = smoe_price(p, c_QE, row_Q, pl, local_K, rpn, &loc_ms, loc_sums);
    if (rc)
        goto out;
    if (loc_ms < mm_ms) {
        memcpy(demand_K, local_K, (size_t)K * sizeof *local_K);
        memcpy(sums, loc_sums, (size_t)(4 * N) * sizeof *sums);
        *ms = loc_ms;
        *node_local = 1;
    }
out:
    free(ib);
    return rc;
}

/* demand.priced_demand for "fast" and "auto": the "fast" amounts spread over the slots; with
 * "auto" and a cost model that prices the split (smoe_prices_split), the cheaper of them and the
 * node-balanced amounts (returns 1, with ms and sums). SMOE_EUNSUPPORTED for another method. */
int smoe_priced_demand(const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
                       const int64_t *L_E, int64_t rpn, int method, const smoe_cost *p,
                       int64_t *demand_K, double *ms, int64_t *sums)
{
    int node_local;
    return smoe_priced_demand_nl(c_QE, row_Q, pl, L_E, rpn, method, p, demand_K, ms, sums,
                                 &node_local);
}

/* smoe_priced_demand, and whether its stage 1 is the node-balanced amounts (Priced.node_local:
 * *node_local 1 where they won the pricing, else 0). */
int smoe_priced_demand_nl(const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
                          const int64_t *L_E, int64_t rpn, int method, const smoe_cost *p,
                          int64_t *demand_K, double *ms, int64_t *sums, int *node_local)
{
    *node_local = 0;
    if (method != SMOE_METHOD_FAST && method != SMOE_METHOD_AUTO)
        return SMOE_EUNSUPPORTED;
    int64_t *x_P = alloc((size_t)pl->P, sizeof *x_P);
    if (!x_P)
        return SMOE_ENOMEM;
    int rc = smoe_amounts_fast(c_QE, pl, L_E, x_P);
    if (rc == 0)
        smoe_slot_demand(pl, x_P, demand_K);
    free(x_P);
    if (rc)
        return rc;
    if (method == SMOE_METHOD_AUTO && smoe_prices_split(p, pl, rpn)) {
        int64_t *rows = NULL;
        if (!row_Q) { /* both prices read every source's total: sum the rows once */
            if (!(rows = alloc((size_t)pl->N, sizeof *rows)))
                return SMOE_ENOMEM;
            for (int64_t q = 0; q < pl->N; q++)
                rows[q] = smoe_row_sum(c_QE, q, pl->E);
            row_Q = rows;
        }
        rc = cheaper_demand(c_QE, row_Q, pl, L_E, rpn, p, demand_K, ms, sums, node_local);
        free(rows);
        return rc ? rc : 1;
    }
    return 0;
}
