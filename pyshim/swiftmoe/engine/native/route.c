/* One rank's part of the split in C: swiftmoe.engine.split.rank.split_tokens_for_rank (with
 * route_rank, tiers.tier_amounts, node_groups, node_pieces, supply_left and merge) for the
 * methods "fast" and "auto". Stage 1 is split.c's (smoe_priced_demand_nl); routing is integers
 * only, so the port gives NumPy's integers whatever order it adds them in.
 *
 * What the routing is (tiers.py): demands are the slots in (expert, slot) order, supplies
 * (expert, source rank). The local tier fills each (expert, rank) pair's slots, in slot order,
 * with the rank's own tokens of the expert; the node tier (0 < rpn < N) takes, in each group
 * (expert, node) holding a slot, min(supply, demand) in proportion from the node's ranks and
 * from the group's demands and matches them north-west-corner within the group; the last tier
 * matches what is left expert by expert, supplies in source order against demands in demand
 * order, laid end to end over all experts. Every north-west-corner piece is the overlap of a
 * supply's interval with a demand's interval on such a line (merge and route_rank compute
 * exactly those overlaps), so the rank's row and columns are the positive overlaps that involve
 * its supplies or its slots' demands.
 *
 * Cost: one pass over the counts (O(N*E)), the plan's index and the tiers' amounts (O(K) and
 * O(N*E) at most for the node tier's supplies), stage 1 (split.c), then O(K + S*N) for the
 * rank's pieces. Nothing is [N, K]. */
#include "smoe.h"
#include "smoe_util.h" /* imax, imin, floordiv, floormod, proportional */

#include <stdlib.h>
#include <string.h>

/* proportional (smoe_util.h) of a, in place, with its exact cases done without division:
 * m == tot takes every amount (all zero when tot is 0), m == 0 none. */
static void take(int64_t *a, int64_t n, int64_t tot, int64_t m, unsigned char *frac)
{
    if (m == tot)
        return;
    if (m == 0)
        memset(a, 0, (size_t)n * sizeof *a);
    else
        proportional(a, n, tot, m, a, frac);
}

/* The overlap of [a0, a1) and [b0, b1), <= 0 where they do not overlap. */
static int64_t overlap(int64_t a0, int64_t a1, int64_t b0, int64_t b1)
{
    return imin(a1, b1) - imax(a0, b0);
}

int smoe_split_for_rank(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                        int64_t S, int64_t rank, int64_t rpn, int method, const smoe_cost *p,
                        int64_t *send_K, int64_t *recv_QS, int64_t *load_R, int *node_local,
                        smoe_planned *planned)
{
    return smoe_split_for_rank_given(c_QE, slots_K, N, E, S, rank, rpn, method, p, send_K,
                                     recv_QS, load_R, node_local, planned, NULL, NULL);
}

int smoe_split_for_rank_given(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                              int64_t S, int64_t rank, int64_t rpn, int method,
                              const smoe_cost *p, int64_t *send_K, int64_t *recv_QS,
                              int64_t *load_R, int *node_local, smoe_planned *planned,
                              const smoe_planned *given, const smoe_plan *index)
{
    int given_nl = *node_local;
    *node_local = 0;
    if (method != SMOE_METHOD_FAST && method != SMOE_METHOD_AUTO)
        return SMOE_EUNSUPPORTED;
    if (N < 1 || E < 1 || S < 1 || rank < 0 || rank >= N)
        return SMOE_EBUG; /* the caller checks these */
    smoe_plan pl; /* the caller's index, or one made here (and freed) */
    int rc = 0;
    if (index)
        pl = *index;
    else if ((rc = smoe_plan_init(&pl, slots_K, N, S, E)) != 0)
        return rc;
    const int64_t K = pl.K, P = pl.P, r = rank;
    const int node = 0 < rpn && rpn < N; /* tiers.tier_amounts: a node tier */
    const int64_t *d_k = pl.d_k, *d_r = pl.d_r, *d_e = pl.d_e;

    /* use_S holds the node tier's supply amounts of the groups r needs them of: those of r's
     * node (at most min(E, rpn*S) groups of rpn ranks) and those of its slots' experts (S
     * experts, N ranks each at most). */
    const int64_t US = node ? imin(E, rpn * S) * rpn + S * N : 0;
    size_t n64 = (size_t)(5 * E + 9 * K + 3 + 7 * N + US);
    int64_t *blk = malloc(n64 * sizeof *blk);
    unsigned char *bytes = malloc((size_t)(K + E + 1));
    if (!blk || !bytes) {
        free(blk);
        free(bytes);
        if (!index)
            smoe_plan_free(&pl);
        return SMOE_ENOMEM;
    }
    unsigned char *frac = bytes, *need_E = bytes + K;
    int64_t *L_E = blk, *pre_E = L_E + E, *cutpre_E = pre_E + E, *cutr_E = cutpre_E + E;
    int64_t *gfirst_E = cutr_E + E, *demand_K = gfirst_E + E, *da = demand_K + K;
    int64_t *use_D = da + K, *took_P = use_D + K, *dstart = took_P + K; /* dstart: K + 1 */
    int64_t *g_f = dstart + K + 1, *g_off = g_f + K + 1, *g_r = g_off + K + 1; /* G <= K */
    int64_t *sums = g_r + K, *col = sums + 4 * N, *node_R = col + N, *row_Q = node_R + N;
    int64_t *use_S = row_Q + N;

    /* One pass over the counts: each expert's total L_E, pre_E, its tokens from the sources
     * before r, and each source's total row_Q. */
    memset(L_E, 0, (size_t)E * sizeof *L_E);
    for (int64_t q = 0; q < N; q++) {
        if (q == r)
            memcpy(pre_E, L_E, (size_t)E * sizeof *L_E);
        const int64_t *row = c_QE + q * E;
        int64_t rs = 0;
        for (int64_t e = 0; e < E; e++) {
            L_E[e] += row[e];
            rs += row[e];
        }
        row_Q[q] = rs;
    }

    /* Stage 1 (demand.priced_demand) and every rank's load. */
    double ms = 0.0;
    if (given) {
        memcpy(demand_K, given->demand_K, (size_t)K * sizeof *demand_K);
        rc = given->priced;
        if (rc) {
            ms = given->ms;
            memcpy(sums, given->sums, (size_t)(4 * N) * sizeof *sums);
        }
        *node_local = given_nl;
    } else {
        rc = smoe_priced_demand_nl(c_QE, row_Q, &pl, L_E, rpn, method, p, demand_K, &ms, sums,
                                   node_local);
    }
    if (rc < 0)
        goto out;
    if (planned) {
        memcpy(planned->demand_K, demand_K, (size_t)K * sizeof *demand_K);
        planned->priced = rc;
        if (rc) {
            planned->ms = ms;
            memcpy(planned->sums, sums, (size_t)(4 * N) * sizeof *sums);
        }
    }
    rc = 0;
    for (int64_t q = 0; q < N; q++) {
        int64_t l = 0;
        for (int64_t s = 0; s < S; s++)
            l += demand_K[q * S + s];
        load_R[q] = l;
    }
    memset(send_K, 0, (size_t)K * sizeof *send_K);
    memset(recv_QS, 0, (size_t)K * sizeof *recv_QS);

    /* The local tier (tier_amounts' take): pair (e, q)'s tokens counts[q, e] fill q's slots
     * of e in slot order; da is what is left of each demand. cutpre_E / cutr_E: what the small
     * tiers take from the supplies (e, q < r) summed over q, and from (e, r). */
    memset(cutpre_E, 0, (size_t)(2 * E) * sizeof *cutpre_E);
    int64_t cut_total = 0;
    for (int64_t pp = 0; pp < P; pp++) {
        int64_t q = pl.r_P[pp], e = pl.e_P[pp];
        int64_t loc = c_QE[q * E + e], before = 0, took = 0;
        int64_t f = pl.d_first_P[pp];
        for (int64_t j = f; j < f + pl.mult_P[pp]; j++) {
            int64_t dj = demand_K[d_k[j]];
            int64_t t = imin(imax(loc - before, 0), dj); /* np.clip(a, 0, da) */
            before += dj;
            da[j] = dj - t;
            took += t;
        }
        took_P[pp] = took;
        cut_total += took;
        if (q < r)
            cutpre_E[e] += took;
        else if (q == r)
            cutr_E[e] += took;
    }
    /* The local tier's pieces of r: r's own tokens to r's own slots. */
    for (int64_t s = 0; s < S; s++) {
        int64_t k = r * S + s, t = demand_K[k] - da[pl.dpos_K[k]];
        send_K[k] += t;
        recv_QS[r * S + s] += t;
    }

    /* The node tier (tier_amounts, node_groups): groups (expert, node holding a slot of it) are
     * runs of demands, group g's g_f[g]..g_f[g+1]-1, its supplies the node's ranks less what
     * the local tier took from them, min(supply, demand) taken in proportion from both sides.
     * Only the groups in g_r (r's node's) and those of r's slots' experts keep their supplies'
     * amounts (use_S from g_off[g]; -1: not kept); from the groups of the nodes before r's,
     * the supplies before r lose m in all. */
    for (int64_t e = 0; e < E; e++)
        gfirst_E[e] = -1;
    int64_t G = 0, nr = 0, n_r = 0;
    if (node) {
        nr = r / rpn;
        for (int64_t q = 0; q < N; q++)
            node_R[q] = q / rpn;
        memset(need_E, 0, (size_t)E);
        for (int64_t s = 0; s < S; s++)
            need_E[slots_K[r * S + s]] = 1;
        int64_t off = 0;
        for (int64_t f = 0; f < K; G++) {
            int64_t e = d_e[f], nd = node_R[d_r[f]], l = f;
            while (l + 1 < K && d_e[l + 1] == e && node_R[d_r[l + 1]] == nd)
                l++;
            if (gfirst_E[e] < 0)
                gfirst_E[e] = G;
            int64_t q0 = nd * rpn, nq = imin(q0 + rpn, N) - q0;
            int64_t p0 = pl.d_pair[f], p1 = pl.d_pair[l], stot = 0, dtot = 0;
            for (int64_t i = 0; i < nq; i++)
                stot += c_QE[(q0 + i) * E + e];
            for (int64_t pp = p0; pp <= p1; pp++)
                stot -= took_P[pp];
            for (int64_t j = f; j <= l; j++)
                dtot += da[j];
            int64_t m = imin(stot, dtot);
            g_f[G] = f;
            g_off[G] = -1;
            if (nd == nr || need_E[e]) {
                int64_t *sa = use_S + off, pp = p0;
                if (off + nq > US) {
                    rc = SMOE_EBUG;
                    goto out;
                }
                g_off[G] = off;
                off += nq;
                for (int64_t i = 0; i < nq; i++) {
                    int64_t cut = 0;
                    if (pp <= p1 && pl.r_P[pp] == q0 + i)
                        cut = took_P[pp++];
                    sa[i] = c_QE[(q0 + i) * E + e] - cut;
                }
                take(sa, nq, stot, m, frac);
                if (nd == nr) {
                    g_r[n_r++] = G;
                    for (int64_t i = 0; i < nq && q0 + i <= r; i++) {
                        if (q0 + i < r)
                            cutpre_E[e] += sa[i];
                        else
                            cutr_E[e] += sa[i];
                    }
                }
            }
            if (nd < nr)
                cutpre_E[e] += m;
            cut_total += m;
            memcpy(use_D + f, da + f, (size_t)(l - f + 1) * sizeof *da);
            take(use_D + f, l - f + 1, dtot, m, frac);
            for (int64_t j = f; j <= l; j++)
                da[j] -= use_D[j];
            f = l + 1;
        }
        g_f[G] = K;

        /* The node tier's pieces of r: the groups of r's node hold every piece from r's
         * supplies or to r's slots; north-west corner within each. */
        int64_t q0 = nr * rpn, nq = imin(q0 + rpn, N) - q0;
        for (int64_t x = 0; x < n_r; x++) {
            int64_t gg = g_r[x], f = g_f[gg], l = g_f[gg + 1] - 1;
            const int64_t *sa = use_S + g_off[gg];
            int64_t i = 0, j = f, s0 = 0, s1 = sa[0], t0 = 0, t1 = use_D[f];
            while (i < nq && j <= l) {
                int64_t a = overlap(s0, s1, t0, t1);
                if (a > 0) {
                    int64_t q = q0 + i;
                    if (q == r)
                        send_K[d_k[j]] += a;
                    if (d_r[j] == r)
                        recv_QS[q * S + (d_k[j] - r * S)] += a;
                }
                if (s1 <= t1) {
                    if (++i < nq)
                        s0 = s1, s1 += sa[i];
                } else {
                    if (++j <= l)
                        t0 = t1, t1 += use_D[j];
                }
            }
        }
    }

    /* The last tier: demands laid end to end (dstart), each expert's supplies in source order
     * from where its demands start. tiers.check_routed: supplies and demands have one total. */
    dstart[0] = 0;
    for (int64_t j = 0; j < K; j++)
        dstart[j + 1] = dstart[j] + da[j];
    int64_t total = 0;
    for (int64_t e = 0; e < E; e++)
        total += L_E[e];
    if (total - cut_total != dstart[K]) {
        rc = SMOE_EBUG;
        goto out;
    }
    /* Row: r's supply of each held expert against that expert's demands. */
    for (int64_t e = 0; e < E; e++) {
        int64_t deg = pl.deg_E[e];
        if (deg == 0)
            continue;
        int64_t sup = c_QE[r * E + e] - cutr_E[e];
        if (sup <= 0)
            continue;
        int64_t pa = pl.start_E[e], pz = pa + deg - 1;
        int64_t j0 = pl.d_first_P[pa], j1 = pl.d_first_P[pz] + pl.mult_P[pz];
        int64_t ss = dstart[j0] + pre_E[e] - cutpre_E[e], se = ss + sup;
        for (int64_t j = j0; j < j1 && dstart[j] < se; j++) {
            int64_t a = overlap(ss, se, dstart[j], dstart[j + 1]);
            if (a > 0)
                send_K[d_k[j]] += a;
        }
    }
    /* Columns: each of r's slots is a demand; the supplies of its expert it overlaps. col: what
     * the small tiers left of expert e's supplies, by source (supply_left's column). */
    int64_t col_e = -1;
    for (int64_t s = 0; s < S; s++) {
        int64_t k = r * S + s, j = pl.dpos_K[k];
        int64_t ds = dstart[j], de = dstart[j + 1];
        if (de == ds)
            continue;
        int64_t e = slots_K[k];
        if (e != col_e) {
            col_e = e;
            for (int64_t q = 0; q < N; q++)
                col[q] = c_QE[q * E + e];
            for (int64_t pp = pl.start_E[e]; pp < pl.start_E[e] + pl.deg_E[e]; pp++)
                col[pl.r_P[pp]] -= took_P[pp];
            if (node) /* need_E[e]: every group of e kept its supplies' amounts */
                for (int64_t gg = gfirst_E[e]; gg >= 0 && gg < G && d_e[g_f[gg]] == e; gg++) {
                    int64_t q0 = node_R[d_r[g_f[gg]]] * rpn, nq = imin(q0 + rpn, N) - q0;
                    for (int64_t i = 0; i < nq; i++)
                        col[q0 + i] -= use_S[g_off[gg] + i];
                }
        }
        int64_t pos = dstart[pl.d_first_P[pl.start_E[e]]];
        for (int64_t q = 0; q < N && pos < de; q++) {
            int64_t a = overlap(pos, pos + col[q], ds, de);
            if (a > 0)
                recv_QS[q * S + s] += a;
            pos += col[q];
        }
    }
out:
    free(blk);
    free(bytes);
    if (!index)
        smoe_plan_free(&pl);
    return rc;
}

/* smoe_check_rank_split (smoe.h): splitter._conserves, check by check. Integer sums: NumPy's
 * float bincount of token counts is exact below 2^53, so it compares the same numbers. */
int smoe_check_rank_split(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                          int64_t S, int64_t r, const int64_t *send_K, const int64_t *recv_QS,
                          const int64_t *load_R)
{
    int64_t K = N * S;
    for (int64_t k = 0; k < K; k++)
        if (send_K[k] < 0 || recv_QS[k] < 0)
            return 0;
    int64_t *sent = calloc((size_t)(E ? E : 1), sizeof *sent);
    if (!sent)
        return SMOE_ENOMEM;
    for (int64_t k = 0; k < K; k++)
        sent[slots_K[k]] += send_K[k];
    int ok = 1;
    for (int64_t e = 0; e < E && ok; e++)
        ok = sent[e] == c_QE[r * E + e];
    free(sent);
    if (!ok)
        return 0;
    /* Each expert on r once, at its first slot there: what its slots receive together. */
    const int64_t *mine = slots_K + r * S;
    int64_t got = 0;
    for (int64_t s = 0; s < S; s++) {
        int64_t e = mine[s], first = 1;
        for (int64_t t = 0; t < s && first; t++)
            first = mine[t] != e;
        if (!first)
            continue;
        for (int64_t q = 0; q < N; q++) {
            int64_t v = 0;
            for (int64_t t = s; t < S; t++)
                if (mine[t] == e)
                    v += recv_QS[q * S + t];
            if (v > c_QE[q * E + e])
                return 0;
        }
    }
    for (int64_t i = 0; i < N * S; i++)
        got += recv_QS[i];
    return load_R[r] == got;
}

/* smoe_check_layer (smoe.h): a layer call's placement and counts. */
int smoe_check_layer(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                     int64_t S, int64_t *bad)
{
    const int64_t K = N * S;
    for (int64_t k = 0; k < K; k++) /* checked once by the caller; kept memory: again here */
        if (slots_K[k] < 0 || slots_K[k] >= E)
            return SMOE_EBUG;
    for (int64_t i = 0; i < N * E; i++)
        if (c_QE[i] < 0) {
            *bad = i;
            return SMOE_ENEGATIVE;
        }
    /* plan_index.prepare: an expert without a slot may have no tokens. */
    unsigned char *held = calloc((size_t)E, 1);
    if (!held)
        return SMOE_ENOMEM;
    for (int64_t k = 0; k < K; k++)
        held[slots_K[k]] = 1;
    int64_t orphan = -1;
    for (int64_t e = 0; e < E && orphan < 0; e++) {
        if (held[e])
            continue;
        for (int64_t q = 0; q < N && orphan < 0; q++)
            if (c_QE[q * E + e] > 0)
                orphan = e;
    }
    free(held);
    if (orphan >= 0) {
        *bad = orphan;
        return SMOE_EORPHAN;
    }
    return 0;
}

/* smoe_layer_split (smoe.h): RankSplitter's split of the planned placement in one call. */
int smoe_layer_split(const smoe_layer_args *a, const int64_t *c_QE, int64_t *out)
{
    const int64_t N = a->N, E = a->E, S = a->S, K = N * S, *slots_K = a->slots_K;
    int64_t *send_K = out, *recv_QS = out + K, *load_R = out + 2 * K;
    int64_t *info = out + 3 * K + 5 * N; /* node_local, priced, ms, bad */
    smoe_planned planned = {out + 2 * K + N, out + 3 * K + N, 0.0, 0};
    int node_local = 0;
    info[0] = info[1] = 0;
    info[3] = -1;
    if (N < 1 || E < 1 || S < 1 || a->rank < 0 || a->rank >= N)
        return SMOE_EBUG; /* the caller checks these */
    int rc = smoe_check_layer(c_QE, slots_K, N, E, S, info + 3);
    if (rc < 0)
        return rc;
    rc = smoe_split_for_rank(c_QE, slots_K, N, E, S, a->rank, a->rpn, a->method, a->cost,
                                 send_K, recv_QS, load_R, &node_local, &planned);
    if (rc < 0)
        return rc;
    info[0] = node_local;
    info[1] = planned.priced;
    if (planned.priced)
        memcpy(info + 2, &planned.ms, sizeof planned.ms);
    if (smoe_fault_tokens) /* tests only: a split that loses tokens */
        fault_tokens(send_K, K, smoe_fault_tokens);
    int ok = smoe_check_rank_split(c_QE, slots_K, N, E, S, a->rank, send_K, recv_QS, load_R);
    return ok < 0 ? ok : (ok ? 0 : SMOE_ECONSERVE);
}
