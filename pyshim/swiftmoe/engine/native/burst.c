/* The burst decision (swiftmoe.engine.burst.plan_bursts) in C, bit-identical to the NumPy code.
 *
 * The decision runs on every rank, on the critical path between a layer's counts and its
 * dispatch, whenever the split on the planned placement leaves the busiest rank above the
 * threshold. In NumPy it costs 1.5-6 ms a layer call at 16 ranks: thousands of small array
 * calls. This port runs the same steps with the same float operations in the same order, so it
 * makes the same bursts; the module docstring of swiftmoe/engine/burst.py says what they are.
 * Each function names the Python function it ports.
 *
 * Shape legend: see smoe.h; C bursts (copies), M nodes, G ranks per node. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "smoe.h"
#include "smoe_util.h" /* fault_tokens */

#define GOAL_TOL 5e-3              /* burst._GOAL_TOL */
#define FORWARD_SHARE (1.0 / 3.0)  /* costmodel.FORWARD_SHARE */

typedef struct {
    int64_t e, q, d;
} burst_t;

/* A list of bursts (capacity N*B). */
typedef struct {
    burst_t *b;
    int64_t n;
} blist;

/* A priced candidate: the enlarged placement and its bursts (burst.BurstPlan). */
typedef struct {
    int64_t C, Sx;
    int64_t *slots; /* [N*(S+B)] */
    int64_t *e, *q, *s, *d, *j; /* [N*B] */
    double after, copy;
    /* Its split's stage 1 (smoe_priced_demand_nl's outputs): demand [N*(S+B)], and where
     * priced is 1 its price ms and tier sums [4*N]; node_local. */
    int64_t *demand, *sums;
    double ms;
    int priced, node_local;
} cand_t;

/* The decision's inputs, shared by its steps. */
typedef struct {
    const int64_t *c;   /* [N, E] */
    int64_t *c_pad;     /* [N, E+1] */
    const int64_t *slots;
    int64_t N, E, S, B, rpn;
    const smoe_cost *p;
    int method;
    int64_t *L_E;       /* [E] */
    int64_t *row_Q;     /* [N] each source's total (c's row sums, c_pad's too) */
    int64_t *L_pad;     /* [E+1] */
    int64_t *node_R;    /* [N] */
    int64_t M;
    /* For bound_after: each expert's ranks in the planned placement [E] and, for an expert on
     * one rank, that rank [E]; and scratch. */
    int64_t *deg0, *deg_w, *one0;
    /* For bound_after's all-to-all term: the nodes holding each expert in the planned
     * placement [M, E], and scratch of its size; what each source sends for the experts its
     * node does not hold [N]; and the counts' total. */
    unsigned char *node0, *node_w;
    int64_t *se0, total;
    /* What each source sends to other ranks at least: its total less its tokens for the
     * experts it holds [N]; for an expert held in one node (nodes0_E 1), that node [E] and the
     * tokens the other nodes send it (out0_E); and nodes_w, scratch of E. */
    int64_t *need0, *nodes0_E, *nodes_w, *node_E, *out0_E;
    /* For the level bound: each rank's place in an order of the ranks [N] (level_order's), each
     * expert's last place among its planned ranks [E] (-1: none), and scratch: E, then 3 N
     * (the last N level_order's doubles). One block, at_R's. */
    int64_t *at_R, *last0_E, *last_w, *level_w;
} ctx_t;

static void *zalloc(size_t n, size_t size) { return calloc(n ? n : 1, size); }

/* costmodel.node_of */
static void node_of(const smoe_cost *p, int64_t *node_R) {
    int64_t G = p->ranks_per_node;
    for (int64_t r = 0; r < p->ranks; r++) node_R[r] = (G == 0 || G >= p->ranks) ? 0 : r / G;
}

static double dmax(double a, double b) { return b > a ? b : a; } /* Python's max(a, b) */

static double over(double bytes, double bw) { return bw <= 0 ? 0.0 : bytes / bw; }

/* burst.past_threshold */
static int past_threshold(const int64_t *load_R, int64_t N, int64_t B, double threshold) {
    int64_t total = 0, mx = 0;
    for (int64_t r = 0; r < N; r++) {
        total += load_R[r];
        if (load_R[r] > mx) mx = load_R[r];
    }
    if (B == 0 || N <= 1 || total == 0) return 0;
    return (double)(mx * N) > threshold * (double)total;
}

/* costmodel.copy_traffic: csi, cri, cse, cre [N] each, in out [4*N]. */
static void copy_traffic(const ctx_t *x, const int64_t *q_C, const int64_t *d_C, int64_t C,
                         double *out) {
    int64_t N = x->N;
    memset(out, 0, sizeof(double) * 4 * N);
    for (int64_t c = 0; c < C; c++) {
        int64_t q = q_C[c], d = d_C[c];
        if (q == d) continue;
        if (x->node_R[q] == x->node_R[d]) {
            out[q] += 1.0;
            out[N + d] += 1.0;
        } else {
            out[2 * N + q] += 1.0;
            out[3 * N + d] += 1.0;
        }
    }
}

/* costmodel.copy_exposed_ms */
static double copy_exposed_ms(const smoe_cost *p, const int64_t *planned_R, const int64_t *burst_R,
                              const double *tr, int64_t N) {
    const double *csi = tr, *cri = tr + N, *cse = tr + 2 * N, *cre = tr + 3 * N;
    double b = p->expert_bytes, cmax = 0.0;
    int any = 0;
    double *c_R = zalloc(N, sizeof(double));
    if (!c_R) return NAN;
    for (int64_t r = 0; r < N; r++) {
        double ti = over(fmax(csi[r], cri[r]) * b, p->intra_bw);
        double te = over(fmax(cse[r], cre[r]) * b, p->inter_bw);
        c_R[r] = 1e3 * (te > ti ? te : ti);
        if (c_R[r] != 0.0) any = 1;
        if (r == 0 || c_R[r] > cmax) cmax = c_R[r];
    }
    if (N == 0 || !any) {
        free(c_R);
        return 0.0;
    }
    if (!smoe_prices_compute(p)) {
        free(c_R);
        return 2.0 * cmax;
    }
    double ms = 1e3 * p->flops_per_token / p->flops_per_s, f = FORWARD_SHARE;
    double tmax = 0.0, pbmax = 0.0;
    for (int64_t r = 0; r < N; r++) {
        double P = (double)planned_R[r] * ms, Bv = (double)burst_R[r] * ms;
        double a = f * P, a2 = (1.0 - f) * P;
        double T = (c_R[r] >= a ? c_R[r] : a) + (c_R[r] >= a2 ? c_R[r] : a2) + Bv;
        double pb = P + Bv;
        if (r == 0 || T > tmax) tmax = T;
        if (r == 0 || pb > pbmax) pbmax = pb;
    }
    free(c_R);
    return dmax(tmax - pbmax, 0.0);
}

/* burst._price: compute_ms + a2a_ms of a split (the a2a only when the network is priced); the
 * tier sums into sums when given and priced (*has_sums says whether). */
static int price_split(const ctx_t *x, const int64_t *c, const smoe_plan *pl, const int64_t *demand,
                       double *ms, int64_t *sums, int *has_sums) {
    if (smoe_prices_network(x->p)) {
        int rc = smoe_price(x->p, c, x->row_Q, pl, demand, x->rpn, ms, sums);
        if (rc < 0) return rc;
        *has_sums = 1;
        return 0;
    }
    int64_t mx = 0;
    for (int64_t r = 0; r < pl->N; r++) {
        int64_t l = 0;
        for (int64_t s = 0; s < pl->S; s++) l += demand[r * pl->S + s];
        if (r == 0 || l > mx) mx = l;
    }
    *ms = smoe_compute_ms(x->p, (double)mx);
    *has_sums = 0;
    return 0;
}

/* burst._layout: the enlarged placement of a list of bursts into cand (its slots and bursts). */
static int layout(const ctx_t *x, const burst_t *b, int64_t C, cand_t *cd) {
    int64_t N = x->N, S = x->S, E = x->E;
    int64_t *per_R = zalloc(N, sizeof(int64_t));
    if (!per_R) return SMOE_ENOMEM;
    int64_t mx = 0;
    for (int64_t c = 0; c < C; c++) {
        cd->e[c] = b[c].e;
        cd->q[c] = b[c].q;
        cd->d[c] = b[c].d;
        cd->j[c] = S + per_R[b[c].d]++; /* the j-th burst of its destination, in list order */
        if (per_R[b[c].d] > mx) mx = per_R[b[c].d];
    }
    int64_t Sx = S + mx;
    for (int64_t r = 0; r < N; r++) {
        for (int64_t s = 0; s < Sx; s++) cd->slots[r * Sx + s] = s < S ? x->slots[r * S + s] : E;
    }
    for (int64_t c = 0; c < C; c++) {
        cd->slots[cd->d[c] * Sx + cd->j[c]] = cd->e[c];
        int64_t s = 0; /* the source's first planned slot holding the expert */
        for (int64_t t = 0; t < S; t++) {
            if (x->slots[cd->q[c] * S + t] == cd->e[c]) {
                s = t;
                break;
            }
        }
        cd->s[c] = s;
    }
    cd->C = C;
    cd->Sx = Sx;
    free(per_R);
    return 0;
}

/* A lower bound on the after_ms evaluate gives the list b[0..C-1], from the counts and the
 * enlarged placement's replicas, without its split:
 * - compute: any split's busiest rank takes at least the mean load, ceil(L/ranks) of an
 *   expert on that many ranks, and all of an expert on one rank (amounts.lower_bound's terms,
 *   which the split meets or exceeds); and, for each first i ranks of an order (level_order's),
 *   the mean over them of the experts they alone hold (amounts.level_bound's term: any order
 *   gives a bound; this one is the planned split's busiest ranks first);
 * - all-to-all, where the price has it (a2a_ms grows with every rank's tier sums):
 *   - a source sends to other ranks at least its tokens for the experts it holds no replica
 *     of (the local tier takes no more than its own tokens of an expert), and across nodes at
 *     least those for the experts its node holds none of (neither tier can take them). Within
 *     one node all go over the intra-node link. On several, si + se is at least the first and
 *     se the second, and max(si / bw_intra, se / bw_inter) is least where the two are equal
 *     (or se at its least);
 *   - an expert held in one node receives there across nodes all its tokens from the other
 *     nodes, on its ranks there: one of them receives at least their mean.
 *   The bound is scaled by (1 - 1e-9), so that float rounding of the tier sums' prices cannot
 *   put it above them.
 * The copies' exposed time is >= 0, and each term grows with what it is given, so after_ms >=
 * this bound, also where evaluate drops bursts left without tokens (fewer replicas only raise
 * it). A list whose bound is not below the best so far cannot win, so it is not evaluated: the
 * decision is the same, for the evaluations that made it. */
static double bound_after(const ctx_t *x, const burst_t *b, int64_t C)
{
    int64_t N = x->N, E = x->E, G = x->rpn;
    int nodes = 0 < G && G < N, net = smoe_prices_network(x->p);
    int a2a = x->M > 1 && nodes && x->p->inter_bw > 0;
    int64_t *deg = x->deg_w, *forced = x->one0 + E, *se = x->one0 + E + N;
    int64_t *need = x->one0 + E + 2 * N, *nodes_E = x->nodes_w;
    memcpy(deg, x->deg0, sizeof(int64_t) * E);
    if (a2a) memcpy(se, x->se0, sizeof(int64_t) * N);
    if (net) {
        memcpy(need, x->need0, sizeof(int64_t) * N);
        for (int64_t c = 0; c < C; c++) need[b[c].d] -= x->c[b[c].d * E + b[c].e];
    }
    if (a2a) memcpy(nodes_E, x->nodes0_E, sizeof(int64_t) * E);
    /* Every list puts a burst only on a rank that does not hold its expert yet (greedy,
     * local_list and union_list check), so each adds a rank to its expert; were one not to,
     * the bound would only be lower. The nodes a list adds to an expert are marked in scratch
     * that is all 0 between calls (unmarked below): O(C * G) a list, not O(N * E). */
    for (int64_t c = 0; c < C; c++) {
        int64_t d = b[c].d, e = b[c].e, m = x->node_R[d];
        unsigned char *in = x->node_w + m * E + e;
        deg[e]++;
        if (a2a && !*in && !x->node0[m * E + e]) {
            nodes_E[e]++;
            *in = 1; /* the node's sources no longer send e's tokens away */
            for (int64_t q = m * G; q < (m + 1) * G && q < N; q++) se[q] -= x->c[q * E + e];
        }
    }
    for (int64_t c = 0; c < C; c++) x->node_w[x->node_R[b[c].d] * E + b[c].e] = 0;
    int64_t lb = (x->total + N - 1) / N; /* counts >= 0: ceil */
    memset(forced, 0, sizeof(int64_t) * N);
    for (int64_t e = 0; e < E; e++) {
        int64_t d = deg[e];
        if (d <= 0) continue;
        int64_t v = (x->L_E[e] + d - 1) / d;
        if (v > lb) lb = v;
        if (d == 1) forced[x->one0[e]] += x->L_E[e];
    }
    for (int64_t r = 0; r < N; r++)
        if (forced[r] > lb) lb = forced[r];
    int64_t *last = x->last_w, *level = x->level_w, sum = 0;
    memcpy(last, x->last0_E, sizeof(int64_t) * E);
    for (int64_t c = 0; c < C; c++)
        if (x->at_R[b[c].d] > last[b[c].e]) last[b[c].e] = x->at_R[b[c].d];
    memset(level, 0, sizeof(int64_t) * N);
    for (int64_t e = 0; e < E; e++)
        if (last[e] >= 0) level[last[e]] += x->L_E[e];
    for (int64_t i = 0; i < N; i++) { /* the first i+1 ranks alone hold sum: ceil(sum/(i+1)) */
        sum += level[i];
        int64_t v = (sum + i) / (i + 1);
        if (v > lb) lb = v;
    }
    double ms = smoe_compute_ms(x->p, (double)lb);
    if (!net) return ms;
    double t = 0.0, bi = x->p->intra_bw, be = x->p->inter_bw, tb = x->p->token_bytes;
    for (int64_t q = 0; q < N; q++) { /* sends: si + se >= need, se >= the node's part */
        double n = (double)need[q], f = 0.0;
        if (!nodes) {
            if (bi > 0) f = n * tb / bi;
        } else if (bi > 0 && be > 0) {
            double s = n * be / (bi + be), a = a2a ? (double)se[q] : 0.0;
            if (s < a) s = a;
            f = fmax((n - s) * tb / bi, s * tb / be);
        } else if (a2a) {
            f = (double)se[q] * tb / be;
        }
        if (f > t) t = f;
    }
    for (int64_t e = 0; a2a && e < E; e++) { /* receives of an expert held in one node */
        if (x->nodes0_E[e] != 1 || nodes_E[e] != 1 || deg[e] <= 0) continue;
        double f = (double)x->out0_E[e] / (double)deg[e] * tb / be;
        if (f > t) t = f;
    }
    return ms + 4.0 * 1e3 * t * (1.0 - 1e-9);
}

/* The level bound's order: the ranks by their load in demand0 (a split of the planned
 * placement), busiest first, into x->at_R, and each expert's last place among its planned
 * ranks into x->last0_E. The bound holds for any order; one that puts the ranks the experts
 * crowd on first makes it the tightest. */
static void level_order(ctx_t *x, const int64_t *demand0) {
    int64_t N = x->N, S = x->S, E = x->E;
    int64_t *order = x->level_w, *tmp = x->level_w + N;
    double *load = (double *)(x->level_w + 2 * N);
    for (int64_t r = 0; r < N; r++) {
        int64_t l = 0;
        for (int64_t s = 0; s < S; s++) l += demand0[r * S + s];
        load[r] = (double)l;
        order[r] = r;
    }
    smoe_sort_desc(order, N, load, tmp);
    for (int64_t i = 0; i < N; i++) x->at_R[order[i]] = i;
    for (int64_t e = 0; e < E; e++) x->last0_E[e] = -1;
    for (int64_t k = 0; k < N * S; k++) {
        int64_t e = x->slots[k], i = x->at_R[k / S];
        if (i > x->last0_E[e]) x->last0_E[e] = i;
    }
}

/* burst._evaluate: the plan of a list of bursts, priced with the split; bursts left without
 * tokens dropped (and the rest priced again). */
static int evaluate(const ctx_t *x, const burst_t *bursts, int64_t C0, cand_t *cd) {
    int64_t N = x->N, S = x->S, E1 = x->E + 1, C = C0;
    int rc = 0, priced = 0, has_sums = 0;
    burst_t *b = zalloc(C0, sizeof(burst_t));
    int64_t *demand = cd->demand, *sums = zalloc(4 * N, sizeof(int64_t));
    int64_t *planned = zalloc(N, sizeof(int64_t)), *burst = zalloc(N, sizeof(int64_t));
    double *tr = zalloc(4 * N, sizeof(double));
    smoe_plan pl;
    int have_plan = 0;
    double ms = 0.0;
    if (!b || !sums || !planned || !burst || !tr) {
        rc = SMOE_ENOMEM;
        goto out;
    }
    memcpy(b, bursts, sizeof(burst_t) * C0);
    for (;;) {
        if ((rc = layout(x, b, C, cd)) < 0) goto out;
        if (have_plan) smoe_plan_free(&pl);
        if ((rc = smoe_plan_init(&pl, cd->slots, N, cd->Sx, E1)) < 0) goto out;
        have_plan = 1;
        priced = smoe_priced_demand_nl(x->c_pad, x->row_Q, &pl, x->L_pad, x->rpn, x->method,
                                       x->p, demand, &cd->ms, cd->sums, &cd->node_local);
        if (priced < 0) {
            rc = priced;
            goto out;
        }
        int64_t kept = 0;
        for (int64_t c = 0; c < C; c++) {
            if (demand[cd->d[c] * cd->Sx + cd->j[c]] > 0) b[kept++] = b[c];
        }
        if (kept == C) break;
        C = kept;
    }
    cd->priced = priced;
    if (priced) ms = cd->ms;
    copy_traffic(x, cd->q, cd->d, C, tr);
    for (int64_t r = 0; r < N; r++) {
        planned[r] = burst[r] = 0;
        for (int64_t s = 0; s < cd->Sx; s++) {
            if (s < S) planned[r] += demand[r * cd->Sx + s];
            else burst[r] += demand[r * cd->Sx + s];
        }
    }
    double c_ms = copy_exposed_ms(x->p, planned, burst, tr, N);
    if (isnan(c_ms)) {
        rc = SMOE_ENOMEM;
        goto out;
    }
    if (!priced && (rc = price_split(x, x->c_pad, &pl, demand, &ms, sums, &has_sums)) < 0) goto out;
    cd->after = ms + c_ms;
    cd->copy = c_ms;
out:
    if (have_plan) smoe_plan_free(&pl);
    free(b);
    free(sums);
    free(planned);
    free(burst);
    free(tr);
    return rc;
}

/* Expert e's planned holders by slot (ranks, with repeats when a rank holds e twice): by_e
 * [K], first_E [E+1] (burst.py's by_e and first_E). */
static int holders(const ctx_t *x, int64_t *by_e, int64_t *first_E) {
    int64_t K = x->N * x->S, E = x->E;
    int64_t *fill = zalloc(E, sizeof(int64_t));
    if (!fill) return SMOE_ENOMEM;
    memset(first_E, 0, sizeof(int64_t) * (E + 1));
    for (int64_t k = 0; k < K; k++) first_E[x->slots[k] + 1]++;
    for (int64_t e = 0; e < E; e++) first_E[e + 1] += first_E[e];
    for (int64_t k = 0; k < K; k++) {
        int64_t e = x->slots[k];
        by_e[first_E[e] + fill[e]++] = k / x->S;
    }
    free(fill);
    return 0;
}

/* burst._exposed: what a one-way copy time c (ms) leaves exposed beside planned tokens of compute */
static double exposed(double c, double planned, double ms_per_token) {
    double p = planned * ms_per_token, f = FORWARD_SHARE;
    double a = c - f * p, b = c - (1.0 - f) * p;
    return (a >= 0.0 ? a : 0.0) + (b >= 0.0 ? b : 0.0); /* np.maximum(., 0.0) */
}

/* a rank's one-way copy time from the copies it sends and receives within (is, ir) and across
 * (xs, xr) nodes, oi and ox ms each */
static double one_way(double is, double ir, double xs, double xr, double oi, double ox) {
    return dmax(dmax(is, ir) * oi, dmax(xs, xr) * ox);
}

/* greedy's terms of rank r from its copies (tier), planned tokens and estimated load: what one
 * more copy received within its node (pen[r]) or across (pen[N + r]) leaves exposed, in tokens
 * of compute (divided by mpt), and its term of the step estimate (pen[2N + r]). */
static void greedy_rank(int64_t r, const double *tier, int64_t N, const double *planned_R,
                        const double *est, double oi, double ox, double mpt, double *pen) {
    double is = tier[r], ir = tier[N + r], xs = tier[2 * N + r], xr = tier[3 * N + r];
    double pr = planned_R[r];
    pen[r] = exposed(one_way(is, ir + 1.0, xs, xr, oi, ox), pr, mpt) / mpt;
    pen[N + r] = exposed(one_way(is, ir, xs, xr + 1.0, oi, ox), pr, mpt) / mpt;
    pen[2 * N + r] = mpt * est[r] + exposed(one_way(is, ir, xs, xr, oi, ox), pr, mpt);
}

/* burst._greedy: the compute list (out) and how many of it the estimate says to make. */
static int greedy(const ctx_t *x, const int64_t *demand, blist *out, int64_t *n_est) {
    int64_t N = x->N, E = x->E, S = x->S, K = N * S;
    const smoe_cost *p = x->p;
    int rc = 0;
    unsigned char *held = zalloc(N * E, 1), *in_node = zalloc(E * x->M, 1);
    double *A = zalloc(N * E, sizeof(double)), *est = zalloc(N, sizeof(double));
    double *pen = zalloc(3 * N, sizeof(double)), *move_C = zalloc(E, sizeof(double));
    double *planned_R = zalloc(N, sizeof(double));
    unsigned char *planned = zalloc(N * E, 1);
    int64_t *by_e = zalloc(K, sizeof(int64_t)), *first_E = zalloc(E + 1, sizeof(int64_t));
    int64_t *free_R = zalloc(N, sizeof(int64_t)), *sent = zalloc(N, sizeof(int64_t));
    int64_t *d_C = zalloc(E, sizeof(int64_t)), *e_C = zalloc(E, sizeof(int64_t));
    double *tier = zalloc(4 * N, sizeof(double)); /* intra sent, intra recv, inter sent, recv */
    if (!held || !in_node || !A || !est || !pen || !move_C || !by_e || !first_E || !free_R ||
        !sent || !d_C || !e_C || !tier || !planned_R || !planned) {
        rc = SMOE_ENOMEM;
        goto done;
    }
    for (int64_t k = 0; k < K; k++) {
        int64_t r = k / S, e = x->slots[k];
        held[r * E + e] = 1;
        A[r * E + e] += (double)demand[k];
        /* A's row sum: token counts, so exact in any order (the NumPy code sums the row) */
        est[r] += (double)demand[k];
        in_node[e * x->M + x->node_R[r]] = 1;
    }
    double total = 0.0;
    for (int64_t r = 0; r < N; r++) {
        total += est[r];
        free_R[r] = x->B;
    }
    double goal = total / (double)N * (1.0 + GOAL_TOL);
    double least = dmax(1.0, total / (double)N * GOAL_TOL); /* a burst's smallest move */
    double ms_per_token = 1e3 * p->flops_per_token / p->flops_per_s;
    /* one copy's one-way time within and across nodes */
    double oi = p->intra_bw > 0 ? 1e3 * p->expert_bytes / p->intra_bw : 0.0;
    double ox = p->inter_bw > 0 ? 1e3 * p->expert_bytes / p->inter_bw : 0.0;
    double mpt = ms_per_token;
    for (int64_t r = 0; r < N; r++) planned_R[r] = est[r];
    memcpy(planned, held, (size_t)(N * E));
    /* what a copy leaves exposed on each rank, in tokens of compute, within its node (pen_in)
     * and across (pen_out), and each rank's term of the estimate (val); a burst changes them on
     * its source, its destination and the busiest rank only, so they are kept rank by rank. */
    double *pen_in = pen, *pen_out = pen + N, *val = pen + 2 * N;
    for (int64_t r = 0; r < N; r++) greedy_rank(r, tier, N, planned_R, est, oi, ox, mpt, pen);
    if ((rc = holders(x, by_e, first_E)) < 0) goto done;
    double emax = 0.0;
    for (int64_t r = 0; r < N; r++)
        if (r == 0 || est[r] > emax) emax = est[r];
    int64_t best_n = 0;
    double best_ms = ms_per_token * emax;
    out->n = 0;
    while (out->n < N * x->B) {
        int64_t h = 0;
        for (int64_t r = 1; r < N; r++)
            if (est[r] > est[h]) h = r;
        if (est[h] <= goal) break;
        int64_t nc = 0, c = -1, hn = x->node_R[h];
        /* the busiest rank's node: ranks [nlo, nhi) (node_R is r / G, or 0 for every rank) */
        int64_t G = p->ranks_per_node, nlo = 0, nhi = N;
        if (G > 0 && G < N) {
            nlo = hn * G;
            nhi = nlo + G < N ? nlo + G : N;
        }
        int finite = 0;
        for (int64_t e = 0; e < E; e++) {
            if (!(A[h * E + e] > 0)) continue;
            /* in the busiest rank's node when one of its ranks can take e */
            int home = 0;
            for (int64_t r = nlo; r < nhi && !home; r++) home = free_R[r] > 0 && !held[r * E + e];
            int64_t d = 0;
            double sc = INFINITY;
            /* at home only the node's ranks may take it (the others would score infinity) */
            for (int64_t r = home ? nlo : 0; r < (home ? nhi : N); r++) {
                int ok = free_R[r] > 0 && !held[r * E + e];
                double pen = in_node[e * x->M + x->node_R[r]] ? pen_in[r] : pen_out[r];
                double v = ok ? est[r] + pen : INFINITY; /* pen: already over mpt */
                if (v < sc) {
                    sc = v;
                    d = r;
                }
            }
            double m = (est[h] - sc) / 2.0, a = A[h * E + e];
            e_C[nc] = e;
            d_C[nc] = d;
            move_C[nc] = a <= m ? a : m; /* np.minimum */
            if (isfinite(move_C[nc])) {
                finite = 1;
                if (c < 0 || move_C[nc] > move_C[c]) c = nc;
            }
            nc++;
        }
        if (nc == 0 || !finite) break;
        double move = move_C[c];
        int64_t e = e_C[c], d = d_C[c];
        if (move < least) break;
        /* the source: a holder in d's node when one is, fewest copies sent, then the first */
        int64_t q = -1, lo = first_E[e], hi = first_E[e + 1];
        int same = 0;
        for (int64_t i = lo; i < hi; i++)
            if (x->node_R[by_e[i]] == x->node_R[d]) same = 1;
        for (int64_t i = lo; i < hi; i++) {
            int64_t r = by_e[i];
            if (same && x->node_R[r] != x->node_R[d]) continue;
            if (q < 0 || sent[r] < sent[q]) q = r;
        }
        sent[q]++;
        out->b[out->n++] = (burst_t){e, q, d};
        int in = x->node_R[q] == x->node_R[d];
        double *t = in ? tier : tier + 2 * N;
        t[q] += 1.0;
        t[N + d] += 1.0;
        if (planned[h * E + e]) planned_R[h] -= move;
        A[h * E + e] -= move;
        A[d * E + e] += move;
        est[h] -= move;
        est[d] += move;
        held[d * E + e] = 1;
        free_R[d]--;
        greedy_rank(q, tier, N, planned_R, est, oi, ox, mpt, pen);
        greedy_rank(d, tier, N, planned_R, est, oi, ox, mpt, pen);
        greedy_rank(h, tier, N, planned_R, est, oi, ox, mpt, pen);
        double tt = val[0];
        for (int64_t r = 1; r < N; r++)
            if (val[r] > tt) tt = val[r];
        if (tt < best_ms) {
            best_n = out->n;
            best_ms = tt;
        }
    }
    *n_est = best_n;
done:
    free(held);
    free(in_node);
    free(A);
    free(est);
    free(pen);
    free(planned_R);
    free(planned);
    free(move_C);
    free(by_e);
    free(first_E);
    free(free_R);
    free(sent);
    free(d_C);
    free(e_C);
    free(tier);
    return rc;
}

/* burst._local's gain of expert e for every node, into g_M [M] (column e of gain_ME). */
static void local_gain(int64_t e, int64_t M, int64_t E, const double *L_E, const double *reps_E,
                       const double *T_ME, const double *in_ME, const unsigned char *want_ME,
                       double *gain_ME) {
    double share = L_E[e] / dmax(reps_E[e], 1.0);
    double nxt = L_E[e] / (reps_E[e] + 1.0);
    for (int64_t m = 0; m < M; m++) {
        double cross = T_ME[m * E + e] - in_ME[m * E + e] * share;
        cross = cross >= 0.0 ? cross : 0.0; /* np.maximum(., 0.0) */
        int ok = want_ME[m * E + e] && reps_E[e] > 0;
        gain_ME[m * E + e] = ok ? (cross <= nxt ? cross : nxt) : 0.0;
    }
}

/* Node m's largest gain and the first expert that has it (row m of gain_ME [M, E]). */
static void node_best(const double *gain_ME, int64_t m, int64_t E, double *best_M, int64_t *at_M) {
    const double *g = gain_ME + m * E;
    int64_t j = 0;
    for (int64_t e = 1; e < E; e++)
        if (g[e] > g[j]) j = e;
    at_M[m] = j;
    best_M[m] = g[j];
}

/* Node m's entry of expert e changed to gain_ME[m, e]: its largest gain and where it is. */
static void node_update(const double *gain_ME, int64_t m, int64_t e, int64_t E, double *best_M,
                        int64_t *at_M) {
    double v = gain_ME[m * E + e];
    if (v > best_M[m] || (v == best_M[m] && e < at_M[m])) {
        best_M[m] = v;
        at_M[m] = e;
    } else if (at_M[m] == e && v < best_M[m]) {
        node_best(gain_ME, m, E, best_M, at_M);
    }
}

/* burst._local: the locality list (out) and how many of it the estimate says to make; an empty
 * list when it does not apply or no prefix lowers the estimate. sums: the planned split's tier
 * sums [4*N] or NULL. */
static int local_list(const ctx_t *x, const int64_t *demand, const int64_t *sums, blist *out,
                      int64_t *n_loc) {
    const smoe_cost *p = x->p;
    int64_t G = p->ranks_per_node, N = x->N, E = x->E, S = x->S, K = N * S, M = x->M;
    out->n = 0;
    *n_loc = 0;
    if (smoe_nodes(p) == 1 || p->inter_bw <= 0 || p->token_bytes <= 0 || sums == NULL) return 0;
    const int64_t *si = sums, *ri = sums + N, *se = sums + 2 * N, *re = sums + 3 * N;
    int64_t cmax = 0, imax = 0;
    for (int64_t r = 0; r < N; r++) {
        int64_t cr = se[r] > re[r] ? se[r] : re[r], ir = si[r] > ri[r] ? si[r] : ri[r];
        if (r == 0 || cr > cmax) cmax = cr;
        if (r == 0 || ir > imax) imax = ir;
    }
    double t_inter = (double)cmax / p->inter_bw;
    double t_intra = p->intra_bw > 0 ? (double)imax / p->intra_bw : 0.0;
    if (t_inter <= 0 || t_inter < t_intra) return 0;
    int rc = 0;
    unsigned char *held = zalloc(N * E, 1), *want = zalloc(M * E, 1), *full_M = zalloc(M, 1);
    double *reps_E = zalloc(E, sizeof(double)), *in_ME = zalloc(M * E, sizeof(double));
    double *T_ME = zalloc(M * E, sizeof(double)), *L_E = zalloc(E, sizeof(double));
    double *gain = zalloc(M * E, sizeof(double)), *est = zalloc(N, sizeof(double));
    double *cross = zalloc(N, sizeof(double)), *cp = zalloc(4 * N, sizeof(double));
    int64_t *by_e = zalloc(K, sizeof(int64_t)), *first_E = zalloc(E + 1, sizeof(int64_t));
    int64_t *free_R = zalloc(N, sizeof(int64_t)), *at_M = zalloc(M, sizeof(int64_t));
    unsigned char *busy = zalloc(N, 1), *mark = zalloc(N, 1);
    double *best_M = zalloc(M, sizeof(double));
    if (!held || !want || !full_M || !reps_E || !in_ME || !T_ME || !L_E || !gain || !est ||
        !cross || !cp || !by_e || !first_E || !free_R || !busy || !mark || !at_M || !best_M) {
        rc = SMOE_ENOMEM;
        goto done;
    }
    for (int64_t k = 0; k < K; k++) {
        held[(k / S) * E + x->slots[k]] = 1;
        est[k / S] += (double)demand[k];
    }
    double half = 0.5 * (double)cmax;
    for (int64_t r = 0; r < N; r++) {
        int64_t cr = se[r] > re[r] ? se[r] : re[r];
        cross[r] = (double)cr;
        busy[r] = (double)cr >= half;
        free_R[r] = x->B;
    }
    for (int64_t r = 0; r < N; r++) {
        if (!busy[r]) continue;
        for (int64_t e = 0; e < E; e++) {
            want[x->node_R[r] * E + e] = 1;
            if (held[r * E + e])
                for (int64_t m = 0; m < M; m++) want[m * E + e] = 1;
        }
    }
    for (int64_t e = 0; e < E; e++) L_E[e] = (double)x->L_E[e];
    /* Rank by rank, along the rows of held and the counts: reps_E and in_ME count ranks and
     * T_ME sums token counts, exact in any order. */
    for (int64_t r = 0; r < N; r++) {
        const unsigned char *h = held + r * E;
        const int64_t *c = x->c + r * E;
        double *in = in_ME + x->node_R[r] * E, *t = T_ME + x->node_R[r] * E;
        for (int64_t e = 0; e < E; e++) {
            if (h[e]) {
                reps_E[e] += 1.0;
                in[e] += 1.0;
            }
            t[e] += (double)c[e];
        }
    }
    double floor_ = 0.5 * p->expert_bytes / p->token_bytes;
    for (int64_t e = 0; e < E; e++) local_gain(e, M, E, L_E, reps_E, T_ME, in_ME, want, gain);
    /* np.argmax(gain) over [M, E] is the first node with the largest best_M, at its at_M: each
     * node's best is kept as its gains change (a full node's are all 0). */
    for (int64_t m = 0; m < M; m++) node_best(gain, m, E, best_M, at_M);
    if ((rc = holders(x, by_e, first_E)) < 0) goto done;
    double tok_ms = 4e3 * p->token_bytes / p->inter_bw;
    double intra = p->intra_bw > 0 ? 2e3 * p->expert_bytes / p->intra_bw : 0.0;
    double inter = 2e3 * p->expert_bytes / p->inter_bw;
    double most[2] = {0.0, 0.0};
    double xmax = 0.0;
    for (int64_t r = 0; r < N; r++)
        if (r == 0 || cross[r] > xmax) xmax = cross[r];
    int64_t best_n = 0, patience = 2 * G;
    double best_ms = tok_ms * xmax;
    while (out->n < N * x->B && out->n - best_n < patience) {
        int64_t m = 0;
        for (int64_t n = 1; n < M; n++)
            if (best_M[n] > best_M[m]) m = n;
        int64_t e = at_M[m], i = m * E + e;
        double g = gain[i];
        if (g <= floor_) break;
        int64_t lo = m * G, hi = (m + 1) * G < N ? (m + 1) * G : N, d = -1;
        for (int64_t r = lo; r < hi; r++) {
            if (free_R[r] > 0 && !held[r * E + e] && (d < 0 || est[r] < est[d])) d = r;
        }
        if (d < 0) {
            gain[i] = 0.0;
            int anyfree = 0;
            for (int64_t r = lo; r < hi; r++) anyfree |= free_R[r] > 0;
            full_M[m] = !anyfree;
            if (full_M[m]) memset(gain + m * E, 0, sizeof(double) * E);
            node_best(gain, m, E, best_M, at_M);
            continue;
        }
        int64_t plo = first_E[e], phi = first_E[e + 1], n_away = 0, q = -1;
        int same = 0;
        for (int64_t k = plo; k < phi; k++) {
            if (x->node_R[by_e[k]] == m) same = 1;
            else n_away++;
        }
        for (int64_t k = plo; k < phi; k++) {
            int64_t r = by_e[k];
            if (same && x->node_R[r] != m) continue;
            if (q < 0 || cp[r] + cp[2 * N + r] < cp[q] + cp[2 * N + q]) q = r;
        }
        out->b[out->n++] = (burst_t){e, q, d};
        int t = x->node_R[q] == m ? 0 : 1;
        double *ct = cp + 2 * N * t; /* [sent N, received N] of tier t */
        ct[q] += 1.0;
        ct[N + d] += 1.0;
        most[t] = dmax(dmax(most[t], ct[q]), ct[N + d]);
        double share = g / (double)(hi - lo);
        for (int64_t r = lo; r < hi; r++) cross[r] -= share;
        if (n_away) {
            double away = g / (double)n_away;
            memset(mark, 0, N);
            for (int64_t k = plo; k < phi; k++) {
                int64_t r = by_e[k];
                if (x->node_R[r] != m && !mark[r]) { /* a[idx] -= v: once per rank */
                    mark[r] = 1;
                    cross[r] -= away;
                }
            }
        }
        for (int64_t r = 0; r < N; r++) cross[r] = cross[r] >= 0.0 ? cross[r] : 0.0;
        free_R[d]--;
        held[d * E + e] = 1;
        in_ME[m * E + e] += 1.0;
        reps_E[e] += 1.0;
        est[d] += L_E[e] / reps_E[e];
        local_gain(e, M, E, L_E, reps_E, T_ME, in_ME, want, gain);
        for (int64_t n = 0; n < M; n++) {
            if (full_M[n]) gain[n * E + e] = 0.0;
            node_update(gain, n, e, E, best_M, at_M);
        }
        for (int64_t r = 0; r < N; r++)
            if (r == 0 || cross[r] > xmax) xmax = cross[r];
        double t_ms = tok_ms * xmax + dmax(most[0] * intra, most[1] * inter);
        if (t_ms < best_ms) {
            best_n = out->n;
            best_ms = t_ms;
        }
    }
    if (best_n) *n_loc = best_n;
    else out->n = 0;
done:
    free(held);
    free(want);
    free(full_M);
    free(reps_E);
    free(in_ME);
    free(T_ME);
    free(L_E);
    free(gain);
    free(est);
    free(cross);
    free(cp);
    free(by_e);
    free(first_E);
    free(free_R);
    free(busy);
    free(mark);
    free(at_M);
    free(best_M);
    return rc;
}

/* burst._union: first, then the bursts of then that still fit. */
static int union_list(const ctx_t *x, const blist *first, const blist *then, blist *out) {
    int64_t N = x->N, E = x->E;
    unsigned char *held = zalloc(N * E, 1);
    int64_t *free_R = zalloc(N, sizeof(int64_t));
    if (!held || !free_R) {
        free(held);
        free(free_R);
        return SMOE_ENOMEM;
    }
    for (int64_t k = 0; k < N * x->S; k++) held[(k / x->S) * E + x->slots[k]] = 1;
    for (int64_t r = 0; r < N; r++) free_R[r] = x->B;
    out->n = 0;
    for (int64_t i = 0; i < first->n; i++) {
        burst_t b = first->b[i];
        held[b.d * E + b.e] = 1;
        free_R[b.d]--;
        out->b[out->n++] = b;
    }
    for (int64_t i = 0; i < then->n; i++) {
        burst_t b = then->b[i];
        if (free_R[b.d] > 0 && !held[b.d * E + b.e]) {
            held[b.d * E + b.e] = 1;
            free_R[b.d]--;
            out->b[out->n++] = b;
        }
    }
    free(held);
    free(free_R);
    return 0;
}

static void swap_cand(cand_t *a, cand_t *b) {
    cand_t t = *a;
    *a = *b;
    *b = t;
}

/* Is cd (just evaluated) better than the best so far (or, with none, the planned placement)? */
static int beats(const cand_t *cd, const cand_t *best, int have_best, double before) {
    return cd->C > 0 && cd->after < (have_best ? best->after : before);
}

/* A list of bursts tried: not evaluated where its bound shows it cannot beat the best so far
 * (or, with none, the planned placement); else evaluated, and best where it beats it. Returns
 * 1 where it became best, 0 where not, or an error. With smoe_check_bounds set (tests only),
 * every list is evaluated, and a bound above what its list evaluates to is SMOE_EBUG. */
static int try_list(const ctx_t *x, const burst_t *b, int64_t n, double before, cand_t *best,
                    int *have_best, cand_t *cd) {
    double bound = bound_after(x, b, n), goal = *have_best ? best->after : before;
    if (bound >= goal && !smoe_check_bounds) return 0; /* cannot win */
    int rc = evaluate(x, b, n, cd);
    if (rc < 0) return rc;
    if (cd->after < bound) return SMOE_EBUG;
    if (bound >= goal || !beats(cd, best, *have_best, before)) return 0;
    swap_cand(best, cd);
    *have_best = 1;
    return 1;
}

/* burst._best_of_lists: the lists built from one start; best updated in place. */
static int best_of_lists(const ctx_t *x, const int64_t *demand0, const int64_t *sums0, double before,
                         cand_t *best, int *have_best, cand_t *cd) {
    int64_t cap = x->N * x->B;
    int rc = 0;
    blist bursts = {zalloc(cap, sizeof(burst_t)), 0}, local = {zalloc(cap, sizeof(burst_t)), 0};
    blist both = {zalloc(cap, sizeof(burst_t)), 0};
    unsigned char *tried = zalloc(cap + 1, 1);
    int64_t n_est = 0, n_loc = 0;
    if (!bursts.b || !local.b || !both.b || !tried) {
        rc = SMOE_ENOMEM;
        goto done;
    }
    if ((rc = greedy(x, demand0, &bursts, &n_est)) < 0) goto done;
    if ((rc = local_list(x, demand0, sums0, &local, &n_loc)) < 0) goto done;
    if (bursts.n == 0 && local.n == 0) goto done;
    int found = 0;
    int64_t n = bursts.n;
    while (n >= 1 && !tried[n]) {
        tried[n] = 1;
        if ((rc = try_list(x, bursts.b, n, before, best, have_best, cd)) < 0) goto done;
        found |= rc;
        rc = 0;
        if (n == bursts.n && 1 <= n_est && n_est < n) n = n_est;
        else if (!found) n /= 2;
        else break;
    }
    if (local.n) {
        local.n = n_loc;
        if ((rc = union_list(x, &local, &bursts, &both)) < 0) goto done;
        const blist *lists[2] = {&local, &both};
        for (int i = 0; i < (both.n > local.n ? 2 : 1); i++) {
            if ((rc = try_list(x, lists[i]->b, lists[i]->n, before, best, have_best, cd)) < 0)
                goto done;
            rc = 0;
        }
    }
done:
    free(bursts.b);
    free(local.b);
    free(both.b);
    free(tried);
    return rc;
}

static int cand_alloc(cand_t *cd, int64_t N, int64_t S, int64_t B) {
    memset(cd, 0, sizeof(*cd));
    cd->slots = zalloc(N * (S + B), sizeof(int64_t));
    cd->e = zalloc(N * B, sizeof(int64_t));
    cd->q = zalloc(N * B, sizeof(int64_t));
    cd->s = zalloc(N * B, sizeof(int64_t));
    cd->d = zalloc(N * B, sizeof(int64_t));
    cd->j = zalloc(N * B, sizeof(int64_t));
    cd->demand = zalloc(N * (S + B), sizeof(int64_t));
    cd->sums = zalloc(4 * N, sizeof(int64_t));
    return (cd->slots && cd->e && cd->q && cd->s && cd->d && cd->j && cd->demand && cd->sums)
               ? 0
               : SMOE_ENOMEM;
}

static void cand_free(cand_t *cd) {
    free(cd->slots);
    free(cd->e);
    free(cd->q);
    free(cd->s);
    free(cd->d);
    free(cd->j);
    free(cd->demand);
    free(cd->sums);
}

static int64_t same_demand(const int64_t *a, const int64_t *b, int64_t K) {
    return memcmp(a, b, sizeof(int64_t) * K) == 0;
}

/* smoe_plan_bursts, and where bursts are made and win is not NULL, the stage 1 of the split
 * that priced them into win (demand [N*(S+B)], and where priced its ms and sums [4*N]) and
 * *win_nl (its node_local). */
static int64_t plan_bursts(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                           int64_t S, int64_t B, const smoe_cost *p, double threshold,
                           double gate_lo, double gate_hi, int method, const int64_t *load_R,
                           const smoe_planned *planned,
                           int64_t *out_slots, int64_t *out_S, int64_t *out_e, int64_t *out_q,
                           int64_t *out_s, int64_t *out_d, int64_t *out_j, double *out_ms,
                           smoe_planned *win, int *win_nl) {
    int64_t K = N * S, total = 0, rc = 0;
    if (method != SMOE_METHOD_FAST && method != SMOE_METHOD_AUTO) return SMOE_EUNSUPPORTED;
    for (int64_t i = 0; i < N * E; i++) total += c_QE[i];
    /* The answer when no bursts are made: the planned placement. */
    memcpy(out_slots, slots_K, sizeof(int64_t) * K);
    *out_S = S;
    out_ms[0] = out_ms[1] = out_ms[2] = 0.0;
    if (B == 0 || N == 1 || total == 0) return 0;
    ctx_t x = {.c = c_QE, .slots = slots_K, .N = N, .E = E, .S = S, .B = B,
               .rpn = p->ranks_per_node, .p = p, .method = method};
    smoe_plan pl;
    int have_plan = 0, have_best = 0, has_sums = 0, priced = -1;
    cand_t best, cd;
    memset(&best, 0, sizeof(best));
    memset(&cd, 0, sizeof(cd));
    int64_t *demand0 = zalloc(K, sizeof(int64_t)), *other = zalloc(K, sizeof(int64_t));
    int64_t *sums0 = zalloc(4 * N, sizeof(int64_t)), *sums1 = zalloc(4 * N, sizeof(int64_t));
    int64_t *load = zalloc(N, sizeof(int64_t)), *x_P = NULL;
    x.c_pad = zalloc(N * (E + 1), sizeof(int64_t));
    x.L_E = zalloc(E, sizeof(int64_t));
    x.row_Q = zalloc(N, sizeof(int64_t));
    x.L_pad = zalloc(E + 1, sizeof(int64_t));
    x.node_R = zalloc(N, sizeof(int64_t));
    x.deg0 = zalloc(3 * E + 5 * N, sizeof(int64_t));
    x.deg_w = x.deg0 ? x.deg0 + E : NULL;
    x.one0 = x.deg0 ? x.deg0 + 2 * E : NULL;
    double ms0 = 0.0, before = 0.0;
    if (!demand0 || !other || !sums0 || !sums1 || !load || !x.c_pad || !x.L_E || !x.row_Q ||
        !x.L_pad || !x.node_R || !x.deg0 || cand_alloc(&best, N, S, B) < 0 ||
        cand_alloc(&cd, N, S, B) < 0) {
        rc = SMOE_ENOMEM;
        goto done;
    }
    for (int64_t q = 0; q < N; q++) {
        for (int64_t e = 0; e < E; e++) {
            x.c_pad[q * (E + 1) + e] = c_QE[q * E + e];
            x.L_E[e] += c_QE[q * E + e];
            x.row_Q[q] += c_QE[q * E + e];
        }
    }
    memcpy(x.L_pad, x.L_E, sizeof(int64_t) * E);
    x.need0 = x.one0 + E + 4 * N;
    memcpy(x.need0, x.row_Q, sizeof(int64_t) * N);
    for (int64_t k = 0; k < K; k++) { /* a rank counts once for each expert it holds */
        int64_t r = k / S, e = slots_K[k], first = 1;
        for (int64_t j = r * S; j < k && first; j++) first = slots_K[j] != e;
        if (first) {
            x.need0[r] -= c_QE[r * E + e];
            x.deg0[e]++;
            x.one0[e] = r;
        }
    }
    node_of(p, x.node_R);
    x.M = smoe_nodes(p);
    x.node0 = zalloc(2 * x.M * E, 1);
    x.node_w = x.node0 ? x.node0 + x.M * E : NULL;
    if (!x.node0) {
        rc = SMOE_ENOMEM;
        goto done;
    }
    /* Each node's experts, once each (their slots are a run of the placement: nodes of
     * whole ranks), into held_M: what a source sends away is its total less its node's. */
    int64_t *held_M = zalloc(K, sizeof(int64_t)), *first_M = zalloc(x.M + 1, sizeof(int64_t));
    if (!held_M || !first_M) {
        free(held_M);
        free(first_M);
        rc = SMOE_ENOMEM;
        goto done;
    }
    for (int64_t k = 0, n = 0; k < K; k++) {
        int64_t m = x.node_R[k / S];
        unsigned char *in = x.node0 + m * E + slots_K[k];
        if (!*in) {
            *in = 1;
            held_M[n++] = slots_K[k];
        }
        first_M[m + 1] = n;
    }
    x.nodes0_E = zalloc(4 * E, sizeof(int64_t));
    x.at_R = zalloc(5 * N + 2 * E, sizeof(int64_t));
    if (!x.nodes0_E || !x.at_R) {
        free(held_M);
        free(first_M);
        rc = SMOE_ENOMEM;
        goto done;
    }
    x.last0_E = x.at_R + N;
    x.last_w = x.last0_E + E;
    x.level_w = x.last_w + E;
    x.nodes_w = x.nodes0_E + E;
    x.node_E = x.nodes0_E + 2 * E;
    x.out0_E = x.nodes0_E + 3 * E;
    for (int64_t m = 0; m < x.M; m++) {
        for (int64_t e = 0; e < E; e++) {
            if (!x.node0[m * E + e]) continue;
            x.nodes0_E[e]++;
            x.node_E[e] = m;
        }
    }
    for (int64_t e = 0; e < E; e++) { /* the other nodes' tokens of an expert held in one */
        if (x.nodes0_E[e] != 1) continue;
        int64_t v = x.L_E[e];
        for (int64_t q = 0; q < N; q++) v -= x.node_R[q] == x.node_E[e] ? c_QE[q * E + e] : 0;
        x.out0_E[e] = v;
    }
    x.se0 = x.one0 + E + 3 * N;
    for (int64_t q = 0; q < N; q++) {
        int64_t m = x.node_R[q], v = x.row_Q[q];
        for (int64_t i = first_M[m]; i < first_M[m + 1]; i++) v -= c_QE[q * E + held_M[i]];
        x.se0[q] = v;
        x.total += x.row_Q[q];
    }
    free(held_M);
    free(first_M);
    if ((rc = smoe_plan_init(&pl, slots_K, N, S, E)) < 0) goto done;
    have_plan = 1;
    if (planned) { /* the caller's split on the planned placement: not made again */
        memcpy(demand0, planned->demand_K, sizeof(int64_t) * K);
        priced = planned->priced ? 1 : 0;
        if (priced) {
            ms0 = planned->ms;
            memcpy(sums0, planned->sums, sizeof(int64_t) * 4 * N);
        }
    }
    if (load_R == NULL) {
        if (priced < 0)
            priced = smoe_priced_demand(c_QE, x.row_Q, &pl, x.L_E, x.rpn, method, p, demand0,
                                        &ms0, sums0);
        if (priced < 0) {
            rc = priced;
            goto done;
        }
        for (int64_t k = 0; k < K; k++) load[k / S] += demand0[k];
        load_R = load;
    }
    if (!past_threshold(load_R, N, B, threshold)) goto done;
    if (priced < 0) {
        priced = smoe_priced_demand(c_QE, x.row_Q, &pl, x.L_E, x.rpn, method, p, demand0, &ms0,
                                    sums0);
        if (priced < 0) {
            rc = priced;
            goto done;
        }
    }
    if (priced) {
        before = ms0;
        has_sums = 1;
    } else if ((rc = price_split(&x, c_QE, &pl, demand0, &before, sums0, &has_sums)) < 0) {
        goto done;
    }
    out_ms[0] = out_ms[1] = before;
    if (!smoe_prices_compute(p)) goto done; /* nothing to weigh a copy against */
    /* burst.plan_bursts' gate: a decision not expected to pay its host time */
    if (before >= gate_lo && before <= gate_hi) goto done;
    /* burst._starts: the split on the planned placement, then where stage 1 is priced its
     * other form (the min-max amounts', or the node-balanced ones' where it is the min-max). */
    level_order(&x, demand0);
    if ((rc = best_of_lists(&x, demand0, has_sums ? sums0 : NULL, before, &best, &have_best,
                            &cd)) < 0)
        goto done;
    if (method == SMOE_METHOD_AUTO && smoe_prices_split(p, &pl, x.rpn)) {
        x_P = zalloc(pl.P, sizeof(int64_t));
        if (!x_P) {
            rc = SMOE_ENOMEM;
            goto done;
        }
        if ((rc = smoe_amounts_fast(c_QE, &pl, x.L_E, x_P)) < 0) goto done;
        smoe_slot_demand(&pl, x_P, other);
        if (same_demand(other, demand0, K)) {
            if ((rc = smoe_amounts_node_balanced(c_QE, &pl, x.L_E, x.rpn, x_P)) < 0) goto done;
            smoe_slot_demand(&pl, x_P, other);
        }
        if (!same_demand(other, demand0, K)) {
            if ((rc = smoe_tier_sums(c_QE, x.row_Q, &pl, other, x.rpn, sums1)) < 0) goto done;
            level_order(&x, other);
            if ((rc = best_of_lists(&x, other, sums1, before, &best, &have_best, &cd)) < 0)
                goto done;
        }
    }
    if (have_best) {
        memcpy(out_slots, best.slots, sizeof(int64_t) * N * best.Sx);
        *out_S = best.Sx;
        for (int64_t c = 0; c < best.C; c++) {
            out_e[c] = best.e[c];
            out_q[c] = best.q[c];
            out_s[c] = best.s[c];
            out_d[c] = best.d[c];
            out_j[c] = best.j[c];
        }
        out_ms[1] = best.after;
        out_ms[2] = best.copy;
        if (win) {
            memcpy(win->demand_K, best.demand, sizeof(int64_t) * N * best.Sx);
            win->priced = best.priced;
            if (best.priced) {
                win->ms = best.ms;
                memcpy(win->sums, best.sums, sizeof(int64_t) * 4 * N);
            }
            *win_nl = best.node_local;
        }
        rc = best.C;
    }
done:
    if (have_plan) smoe_plan_free(&pl);
    cand_free(&best);
    cand_free(&cd);
    free(demand0);
    free(other);
    free(sums0);
    free(sums1);
    free(load);
    free(x_P);
    free(x.c_pad);
    free(x.L_E);
    free(x.row_Q);
    free(x.L_pad);
    free(x.node_R);
    free(x.deg0);
    free(x.node0);
    free(x.nodes0_E);
    free(x.at_R);
    return rc;
}

int64_t smoe_plan_bursts(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                         int64_t S, int64_t B, const smoe_cost *p, double threshold,
                         double gate_lo, double gate_hi, int method,
                         const int64_t *load_R, const smoe_planned *planned,
                         int64_t *out_slots, int64_t *out_S, int64_t *out_e, int64_t *out_q,
                         int64_t *out_s, int64_t *out_d, int64_t *out_j, double *out_ms) {
    return plan_bursts(c_QE, slots_K, N, E, S, B, p, threshold, gate_lo, gate_hi, method, load_R,
                       planned, out_slots, out_S, out_e, out_q, out_s, out_d, out_j, out_ms, NULL,
                       NULL);
}

/* smoe_fault_tokens and smoe_check_bounds (smoe.h): 0 but in tests. */
int64_t smoe_fault_tokens = 0;
int64_t smoe_check_bounds = 0;

/* smoe_burst_step (smoe.h): burst_run.decide past its threshold, in one call. */
/* The rank's split of an enlarged placement out_slots [N*Sx] (its burst slots' empty id E a
 * virtual expert without tokens), from the stage 1 given (NULL: made here), checked as
 * splitter._conserves checks it, and the placement's send order (dispatch.slot_order: perm_K
 * the slots by expert, stable; inv_K its inverse). Returns 0, SMOE_ECONSERVE, or an error. */
static int enlarged_split(const int64_t *c_QE, int64_t N, int64_t E, int64_t Sx,
                          const int64_t *out_slots, int64_t rank, int64_t rpn, int method,
                          const smoe_cost *p, int64_t *send_K, int64_t *recv_QS, int64_t *load_x,
                          int *node_local, smoe_planned *planned_x, const smoe_planned *given,
                          int64_t *perm_K, int64_t *inv_K) {
    const int64_t Kx = N * Sx, Ep = E + 1;
    for (int64_t k = 0; k < Kx; k++)
        if (out_slots[k] < 0 || out_slots[k] > E) return SMOE_EBUG;
    /* burst.pad_counts: id E is the empty burst slots' virtual expert, without tokens. */
    int64_t *c_pad = malloc(sizeof(int64_t) * (size_t)(N * Ep + Ep + 1));
    if (!c_pad) return SMOE_ENOMEM;
    int64_t *start = c_pad + N * Ep;
    for (int64_t q = 0; q < N; q++) {
        memcpy(c_pad + q * Ep, c_QE + q * E, sizeof(int64_t) * (size_t)E);
        c_pad[q * Ep + E] = 0;
    }
    int rc = smoe_split_for_rank_given(c_pad, out_slots, N, Ep, Sx, rank, rpn, method, p, send_K,
                                       recv_QS, load_x, node_local, planned_x, given, NULL);
    if (rc >= 0 && smoe_fault_tokens) /* tests only: a split that loses tokens */
        fault_tokens(send_K, Kx, smoe_fault_tokens);
    if (rc >= 0) {
        int ok = smoe_check_rank_split(c_pad, out_slots, N, Ep, Sx, rank, send_K, recv_QS,
                                       load_x);
        rc = ok < 0 ? ok : (ok ? 0 : SMOE_ECONSERVE);
    }
    if (rc >= 0) {
        memset(start, 0, sizeof(int64_t) * (size_t)(Ep + 1));
        for (int64_t k = 0; k < Kx; k++) start[out_slots[k] + 1]++;
        for (int64_t e = 0; e < Ep; e++) start[e + 1] += start[e];
        for (int64_t k = 0; k < Kx; k++) perm_K[start[out_slots[k]]++] = k;
        for (int64_t i = 0; i < Kx; i++) inv_K[perm_K[i]] = i;
    }
    free(c_pad);
    return rc;
}

int64_t smoe_burst_step(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                        int64_t S, int64_t B, const smoe_cost *p, double threshold,
                        double gate_lo, double gate_hi, int method,
                        const int64_t *load_R, const smoe_planned *planned, int64_t *out_slots,
                        int64_t *out_S, int64_t *out_e, int64_t *out_q, int64_t *out_s,
                        int64_t *out_d, int64_t *out_j, double *out_ms, int64_t rank,
                        int64_t split_rpn, int split_method, int64_t *send_K, int64_t *recv_QS,
                        int64_t *load_x, int *node_local, smoe_planned *planned_x,
                        int64_t *perm_K, int64_t *inv_K) {
    if (rank < 0 || rank >= N) return SMOE_EBUG; /* the caller checks it */
    int win_nl = 0;
    int64_t n = plan_bursts(c_QE, slots_K, N, E, S, B, p, threshold, gate_lo, gate_hi, method,
                            load_R, planned, out_slots, out_S, out_e, out_q, out_s, out_d, out_j,
                            out_ms, planned_x, &win_nl);
    if (n <= 0) return n;
    /* The decision priced its bursts with this split's stage 1 where the split has its rpn and
     * method (and so its cost: "fast" reads none): the split starts from it. */
    const smoe_planned *given =
        split_rpn == p->ranks_per_node && split_method == method ? planned_x : NULL;
    *node_local = win_nl;
    int rc = enlarged_split(c_QE, N, E, *out_S, out_slots, rank, split_rpn, split_method,
                            split_method == SMOE_METHOD_AUTO ? p : NULL, send_K, recv_QS, load_x,
                            node_local, planned_x, given, perm_K, inv_K);
    return rc < 0 ? rc : n;
}

/* smoe_layer_burst (smoe.h): smoe_burst_step with a's arguments, its outputs in one array. */
int64_t smoe_layer_burst(const smoe_burst_args *a, const int64_t *c_QE, const int64_t *load_R,
                         const int64_t *planned, double planned_ms, int priced, int64_t *out) {
    const int64_t N = a->N, S = a->S, B = a->B, X = N * (S + B);
    const int64_t NB = N * B > 1 ? N * B : 1, K = N * S;
    int64_t *out_S = out, *slots_x = out + 1, *bursts = slots_x + X;
    int64_t *ms = bursts + 5 * NB, *send_K = ms + 3, *recv_QS = send_K + X;
    int64_t *load_x = recv_QS + X, *demand_x = load_x + N, *sums_x = demand_x + X;
    int64_t *info = sums_x + 4 * N, *perm_K = info + 3, *inv_K = perm_K + X;
    smoe_planned pl = {(int64_t *)planned, priced ? (int64_t *)planned + K : NULL, planned_ms,
                       priced};
    smoe_planned px = {demand_x, sums_x, 0.0, 0};
    int node_local = 0;
    double out_ms[3] = {0.0, 0.0, 0.0};
    *out_S = 0;
    if (N < 1 || S < 1 || B < 1 || a->E < 1)
        return SMOE_EBUG; /* the caller checks these */
    for (int64_t k = 0; k < K; k++) /* the caller's memory, kept between calls: checked here */
        if (a->slots_K[k] < 0 || a->slots_K[k] >= a->E)
            return SMOE_EBUG;
    int64_t n = smoe_burst_step(c_QE, a->slots_K, N, a->E, S, B, a->cost, a->threshold,
                                a->gate_lo, a->gate_hi, a->method, load_R,
                                planned ? &pl : NULL, slots_x, out_S, bursts, bursts + NB,
                                bursts + 2 * NB, bursts + 3 * NB, bursts + 4 * NB, out_ms, a->rank,
                                a->split_rpn, a->split_method, send_K, recv_QS, load_x,
                                &node_local, &px, perm_K, inv_K);
    memcpy(ms, out_ms, sizeof out_ms);
    info[0] = node_local;
    info[1] = px.priced;
    memcpy(info + 2, &px.ms, sizeof px.ms);
    return n;
}

/* smoe_layer_step (smoe.h): the planned placement's split and, past the threshold, the burst
 * step from its stage 1, in one call. */
int64_t smoe_layer_step(const smoe_burst_args *a, const int64_t *c_QE, int64_t *out) {
    const int64_t N = a->N, E = a->E, S = a->S, B = a->B, K = N * S, X = N * (S + B);
    const int64_t NB = N * B > 1 ? N * B : 1;
    int64_t *out_S = out, *slots_x = out + 1, *bursts = slots_x + X;
    int64_t *ms = bursts + 5 * NB, *send_K = ms + 3, *recv_QS = send_K + X;
    int64_t *load_x = recv_QS + X, *demand_x = load_x + N, *sums_x = demand_x + X;
    int64_t *info = sums_x + 4 * N, *perm_K = info + 3, *inv_K = perm_K + X, *bad = inv_K + X;
    const smoe_cost *p = a->cost, *p_split = a->method == SMOE_METHOD_AUTO ? p : NULL;
    *out_S = 0;
    *bad = -1;
    memset(ms, 0, 3 * sizeof *ms); /* the three ms: 0 unless the decision runs */
    if (N < 1 || S < 1 || B < 1 || E < 1 || a->rank < 0 || a->rank >= N || !p ||
        a->split_method != a->method || a->split_rpn != p->ranks_per_node)
        return SMOE_EBUG; /* the caller checks these */
    int64_t rc = smoe_check_layer(c_QE, a->slots_K, N, E, S, bad);
    if (rc < 0) return rc;
    /* The planned placement's stage 1 (smoe_split_for_rank's) and every rank's load. */
    int64_t *blk = malloc(sizeof(int64_t) * (size_t)(K + 4 * N + 3 * N + E));
    if (!blk) return SMOE_ENOMEM;
    int64_t *demand0 = blk, *sums0 = demand0 + K, *load0 = sums0 + 4 * N, *row_Q = load0 + N;
    int64_t *L_E = row_Q + N;
    memset(L_E, 0, sizeof(int64_t) * (size_t)E);
    for (int64_t q = 0; q < N; q++) {
        row_Q[q] = 0;
        for (int64_t e = 0; e < E; e++) {
            L_E[e] += c_QE[q * E + e];
            row_Q[q] += c_QE[q * E + e];
        }
    }
    smoe_plan pl;
    if ((rc = smoe_plan_init(&pl, a->slots_K, N, S, E)) < 0) {
        free(blk);
        return rc;
    }
    int nl0 = 0;
    double ms0 = 0.0;
    rc = smoe_priced_demand_nl(c_QE, row_Q, &pl, L_E, a->split_rpn, a->method, p_split, demand0,
                               &ms0, sums0, &nl0);
    smoe_planned st = {demand0, sums0, ms0, (int)(rc > 0)};
    int64_t n = 0;
    if (rc >= 0) {
        for (int64_t r = 0; r < N; r++) {
            load0[r] = 0;
            for (int64_t s = 0; s < S; s++) load0[r] += demand0[r * S + s];
        }
        if (past_threshold(load0, N, B, a->threshold)) {
            smoe_planned px = {demand_x, sums_x, 0.0, 0};
            int nl = 0;
            double out_ms[3] = {0.0, 0.0, 0.0};
            n = smoe_burst_step(c_QE, a->slots_K, N, E, S, B, p, a->threshold, a->gate_lo,
                                a->gate_hi, a->method, load0, &st, slots_x, out_S, bursts,
                                bursts + NB, bursts + 2 * NB, bursts + 3 * NB, bursts + 4 * NB,
                                out_ms, a->rank, a->split_rpn, a->split_method, send_K, recv_QS,
                                load_x, &nl, &px, perm_K, inv_K);
            memcpy(ms, out_ms, sizeof out_ms);
            if (n > 0) {
                info[0] = nl;
                info[1] = px.priced;
                memcpy(info + 2, &px.ms, sizeof px.ms);
            }
        }
        rc = n < 0 ? n : 0;
    }
    if (rc >= 0 && n == 0) { /* the planned placement's split, from its stage 1 */
        smoe_planned px = {demand_x, sums_x, 0.0, 0};
        int nl = nl0;
        *out_S = S;
        rc = smoe_split_for_rank_given(c_QE, a->slots_K, N, E, S, a->rank, a->split_rpn,
                                       a->method, p_split, send_K, recv_QS, load_x, &nl, &px,
                                       &st, &pl);
        if (rc >= 0 && smoe_fault_tokens) /* tests only: a split that loses tokens */
            fault_tokens(send_K, K, smoe_fault_tokens);
        if (rc >= 0) {
            int ok = smoe_check_rank_split(c_QE, a->slots_K, N, E, S, a->rank, send_K, recv_QS,
                                           load_x);
            rc = ok < 0 ? ok : (ok ? 0 : SMOE_ECONSERVE);
        }
        info[0] = nl;
        info[1] = px.priced;
        memcpy(info + 2, &px.ms, sizeof px.ms);
    }
    smoe_plan_free(&pl);
    free(blk);
    return rc < 0 ? rc : n;
}
