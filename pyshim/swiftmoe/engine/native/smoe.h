/* The burst decision in C: the engine's split pricing (split.c) and the decision itself
 * (burst.c), bit-identical to the NumPy code they port (swiftmoe.engine.split and
 * swiftmoe.engine.burst). Loaded with ctypes by swiftmoe.engine.native.
 *
 * Every array is int64 or float64, C-contiguous, owned by the caller unless said otherwise.
 * Inputs are checked by the Python caller before they get here (counts >= 0, expert ids in
 * range, every expert with tokens holding a slot); the C code trusts them.
 *
 * Bit-identity with NumPy: float sums follow NumPy's order exactly. np.bincount with weights
 * adds sequentially in index order from 0.0; np.add.reduceat over a segment a[0..n-1] is
 * a[0] + pairwise(a[1..n-1]) (smoe_pairwise_sum, NumPy's pairwise summation); np.maximum.reduce
 * and integer sums are exact in any order. Expressions keep Python's evaluation order.
 *
 * Return codes: 0 (or a count >= 0) on success, SMOE_ENOMEM when malloc failed, SMOE_EBUG
 * when an internal check failed (a bug: the caller raises).
 *
 * Shape legend: Q source ranks (= N), E experts, N ranks, S slots per rank, K = N*S slots,
 * P (expert, rank) pairs of the plan, C copies (bursts). */
#ifndef SMOE_H
#define SMOE_H

#include <stdint.h>

#define SMOE_ENOMEM (-1)
#define SMOE_EBUG (-2)
#define SMOE_EUNSUPPORTED (-3)
#define SMOE_ECONSERVE (-4) /* a split failed its conservation checks (a bug) */
#define SMOE_ENEGATIVE (-5) /* a negative token count (smoe_layer_split) */
#define SMOE_EORPHAN (-6)   /* tokens for an expert without a slot (smoe_layer_split) */

/* The interface's version: bump it with any change to a struct, a signature or a result, and
 * native/__init__.py's _ABI with it; the loader refuses a library of another version. */
#define SMOE_ABI 10
int64_t smoe_abi(void);

/* The split's methods as smoe_priced_demand takes them ("exact" is not ported). */
#define SMOE_METHOD_FAST 0
#define SMOE_METHOD_AUTO 1

/* swiftmoe.engine.split.plan_index.PlanIndex: what the split derives from a placement. */
typedef struct {
    int64_t N, S, E, K, P;
    int64_t *pair_K;    /* [K] slot k's pair */
    int64_t *mult_P;    /* [P] slots of each pair */
    int64_t *e_P, *r_P; /* [P] pairs sorted by (expert, rank) */
    int64_t *deg_E;     /* [E] pairs (ranks) of each expert */
    int64_t *start_E;   /* [E] each expert's first pair */
    int64_t *idx_K;     /* [K] slot k is the idx_K-th of its pair's slots, in slot order */
    int64_t *mult_K;    /* [K] mult_P[pair_K[k]] */
    int64_t *d_k, *d_r, *d_e, *d_pair; /* [K] demands: slots in (expert, slot) order */
    int64_t *dpos_K;    /* [K] slot k is demand dpos_K[k] */
    int64_t *d_first_P; /* [P] pair p's first demand */
    int all_held;       /* every expert holds a slot (PlanIndex.held_H is None) */
} smoe_plan;

/* The arrays share one allocation: free a plan with smoe_plan_free only. */
int smoe_plan_init(smoe_plan *pl, const int64_t *slots_K, int64_t N, int64_t S, int64_t E);
void smoe_plan_free(smoe_plan *pl);

/* swiftmoe.engine.costmodel.CostParams. */
typedef struct {
    int64_t ranks, ranks_per_node;
    double token_bytes, expert_bytes, flops_per_token, flops_per_s, intra_bw, inter_bw;
} smoe_cost;

int64_t smoe_nodes(const smoe_cost *p);
int smoe_prices_compute(const smoe_cost *p);
int smoe_prices_network(const smoe_cost *p);
/* compute_ms of a busiest rank that computes max_load tokens (0 when compute is unpriced). */
double smoe_compute_ms(const smoe_cost *p, double max_load);
/* a2a_ms of tier sums si, ri, se, re [N] each (costmodel.a2a_ms). */
double smoe_a2a_ms(const smoe_cost *p, const int64_t *si, const int64_t *ri, const int64_t *se,
                   const int64_t *re);

/* NumPy's pairwise summation of a[0..n-1] (pairwise_sum_DOUBLE, blocks of 128, 8 lanes; its
 * short branch starts from -0.0). np.add.reduce(a) is 0.0 + smoe_pairwise_sum(a, n); a segment
 * of np.add.reduceat is a[0] + smoe_pairwise_sum(a + 1, n - 1). */
double smoe_pairwise_sum(const double *a, int64_t n);

/* Stage 1 and the tiers (swiftmoe.engine.split): amounts.amounts_fast, priced.amounts_node_local,
 * demand.slot_demand, tiers.tier_sums. L_E [E]: each expert's total (counts summed over
 * sources). x_P [P], demand_K [K], sums [4*N]: si, ri, se, re one after another.
 * smoe_amounts_fast returns SMOE_EBUG when no scaling round has a finite max (NumPy would fail
 * there too); smoe_amounts_node_local returns SMOE_EUNSUPPORTED unless 0 < rpn < N (where NumPy
 * raises ValueError). */
int smoe_amounts_fast(const int64_t *c_QE, const smoe_plan *pl, const int64_t *L_E, int64_t *x_P);
int smoe_amounts_node_local(const int64_t *c_QE, const smoe_plan *pl, const int64_t *L_E,
                            int64_t rpn, int64_t *x_P);
/* priced.amounts_node_balanced: the node-local amounts, each node's re-split over its replicas
 * by smoe_amounts_fast on the node's own plan; SMOE_EUNSUPPORTED unless 0 < rpn < N. */
int smoe_amounts_node_balanced(const int64_t *c_QE, const smoe_plan *pl, const int64_t *L_E,
                               int64_t rpn, int64_t *x_P);
void smoe_slot_demand(const smoe_plan *pl, const int64_t *x_P, int64_t *demand_K);
/* Source q's total, counts[q, :].sum() of c_QE [N, E]. The tier sums read every source's total:
 * a caller that prices many splits of the same counts passes them (row_Q [N]) so that they are
 * summed once; NULL sums them in the call. */
int64_t smoe_row_sum(const int64_t *c_QE, int64_t q, int64_t E);
int smoe_tier_sums(const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
                   const int64_t *demand_K, int64_t rpn, int64_t *sums);
/* priced.price: compute_ms + a2a_ms of a split's demand (ms), its tier sums into sums [4*N]. */
int smoe_price(const smoe_cost *p, const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
               const int64_t *demand_K, int64_t rpn, double *ms, int64_t *sums);
/* priced.prices_split (the caller has checked that p is of this job and grouping). */
int smoe_prices_split(const smoe_cost *p, const smoe_plan *pl, int64_t rpn);
/* demand.priced_demand for "fast" and "auto" (method SMOE_METHOD_*; p may be NULL): demand_K,
 * and where stage 1 was priced (returns 1) its ms and tier sums; else returns 0 and leaves ms
 * and sums alone. */
int smoe_priced_demand(const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
                       const int64_t *L_E, int64_t rpn, int method, const smoe_cost *p,
                       int64_t *demand_K, double *ms, int64_t *sums);

/* The split on the planned placement, as a layer's split made it (rank.RankSplit.planned):
 * its demand_K [K], and where its stage 1 was priced (priced 1) its ms and tier sums [4*N]. */
typedef struct {
    int64_t *demand_K;
    int64_t *sums;
    double ms;
    int priced;
} smoe_planned;

/* burst.plan_bursts (burst.c). c_QE [N, E]; slots_K [N*S]; load_R [N] or NULL; planned: the
 * split on slots_K with this method and cost, or NULL (computed); out_slots
 * [N*(S+B)] (the enlarged placement, row stride *out_S); out_e/q/s/d/j [N*B] (the bursts, C of
 * them, C returned); out_ms [3]: before_ms, after_ms, copy_ms. The gate: past the threshold,
 * no list is built where gate_lo <= before_ms <= gate_hi (none made, after_ms = before_ms;
 * gate_lo = INFINITY never stops one). Returns C >= 0, or an error. */
int64_t smoe_plan_bursts(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                         int64_t S, int64_t B, const smoe_cost *p, double threshold,
                         double gate_lo, double gate_hi, int method,
                         const int64_t *load_R, const smoe_planned *planned,
                         int64_t *out_slots, int64_t *out_S,
                         int64_t *out_e, int64_t *out_q, int64_t *out_s, int64_t *out_d,
                         int64_t *out_j, double *out_ms);

/* ---------------------------------------------------------------------------------------------
 * One rank's part of the split (route.c): swiftmoe.engine.split.rank.split_tokens_for_rank. */

/* idx [n] sorted stably by v[idx] descending (ties in idx order); tmp: n of scratch. */
void smoe_sort_desc(int64_t *idx, int64_t n, const double *v, int64_t *tmp);

/* smoe_priced_demand, and *node_local: 1 where its stage 1 keeps tokens in their node (the
 * node-balanced amounts won the pricing; Priced.node_local), else 0 (split.c). */
int smoe_priced_demand_nl(const int64_t *c_QE, const int64_t *row_Q, const smoe_plan *pl,
                          const int64_t *L_E, int64_t rpn, int method, const smoe_cost *p,
                          int64_t *demand_K, double *ms, int64_t *sums, int *node_local);

/* rank.split_tokens_for_rank for "fast" and "auto" (method SMOE_METHOD_*; p NULL: no cost):
 * c_QE [N, E]; slots_K [N*S]; 0 <= rank < N; rpn the split's ranks_per_node (0, or >= N: one
 * node). Writes send_K [K] (tokens rank sends to each slot), recv_QS [N*S] (tokens each source
 * sends to rank's slots), load_R [N] (tokens each rank's slots receive), *node_local and, when
 * planned is not NULL, the split's demand and price into it (its arrays the caller's: demand_K
 * [K], sums [4*N]; sums left alone where priced is 0). Returns 0, or SMOE_ENOMEM,
 * SMOE_EUNSUPPORTED (another method) or SMOE_EBUG. */
int smoe_split_for_rank(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                        int64_t S, int64_t rank, int64_t rpn, int method, const smoe_cost *p,
                        int64_t *send_K, int64_t *recv_QS, int64_t *load_R, int *node_local,
                        smoe_planned *planned);

/* smoe_split_for_rank from a given stage 1 (given not NULL): given->demand_K [K], its ms and
 * sums [4*N] where given->priced, and *node_local on entry: what smoe_priced_demand_nl makes of
 * the same counts, placement, rpn, method and cost, so the split is the same. The burst step
 * passes its decision's (burst.c). given NULL: smoe_split_for_rank. planned may be given.
 * index: the placement's smoe_plan_init index where the caller has it (left to the caller to
 * free), or NULL (made here). */
int smoe_split_for_rank_given(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                              int64_t S, int64_t rank, int64_t rpn, int method,
                              const smoe_cost *p, int64_t *send_K, int64_t *recv_QS,
                              int64_t *load_R, int *node_local, smoe_planned *planned,
                              const smoe_planned *given, const smoe_plan *index);

/* smoe_layer_split's arguments but the counts and the outputs, in one struct (native.layer_split
 * builds it per call: a struct's fields cost less to set than ctypes' argument conversions):
 * the placement slots_K [N*S] (ids in 0..E-1, checked by the caller and again on every call),
 * the rank (0 <= rank < N), the split's ranks_per_node, method and cost (NULL: none). */
typedef struct {
    const int64_t *slots_K;
    int64_t N, E, S, rank, rpn;
    const smoe_cost *cost;
    int method;
} smoe_layer_args;

/* The length of smoe_layer_split's out for K = N*S slots on N ranks: 3*K + 5*N + 4. */
#define SMOE_LAYER_OUT(K, N) (3 * (K) + 5 * (N) + 4)

/* RankSplitter's split of the planned placement in one call, where the Python path makes a
 * dozen (whose glue took several times the C's time): the counts' checks of plan_index.prepare
 * (no count < 0: SMOE_ENEGATIVE with bad = q*E + e, the first in row order; no tokens for an
 * expert without a slot: SMOE_EORPHAN with bad = e, the first), smoe_split_for_rank's split of
 * c_QE [N, E] under a's placement, and its conservation checks (smoe_check_rank_split,
 * splitter._conserves: SMOE_ECONSERVE, a bug). Everything it writes goes to out
 * [SMOE_LAYER_OUT(K, N)], one array after another: send_K [K], recv_QS [K], load_R [N],
 * demand_K [K], sums [4*N] (left alone where priced is 0), then node_local, priced, the price
 * in ms (a double's bytes; left alone where priced is 0) and bad (-1 but for the two refusals
 * above); smoe_layer_burst writes its enlarged split in the same order, without bad. Three
 * arguments: the Python call's argument conversions took more time than the counts' checks.
 * Returns 0 or an error (SMOE_EBUG for a slot id outside 0..E-1). */
int smoe_layer_split(const smoe_layer_args *a, const int64_t *c_QE, int64_t *out);

/* The engine's conservation checks of one rank's split (splitter._conserves), from its arrays
 * alone, by code of their own: c_QE [N, E] the counts split, slots_K [N*S] the placement (ids
 * in 0..E-1), r the rank, send_K [N*S], recv_QS [N, S], load_R [N] its split. 1 where rank r
 * sends each expert's tokens exactly (summed over the expert's slots), no amount is negative,
 * the slots of one expert on r together take no more of a source's tokens of it than the source
 * has, and r's load is what it receives; else 0. */
int smoe_check_rank_split(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                          int64_t S, int64_t r, const int64_t *send_K, const int64_t *recv_QS,
                          const int64_t *load_R);

/* ---------------------------------------------------------------------------------------------
 * The engine's burst step of a layer call on one rank (burst.c): burst_run.decide past its
 * threshold, in one call where the Python path makes a dozen (whose glue took about twice the
 * C's time). smoe_plan_bursts's arguments and outputs (out_slots sized N*(S+B)); then, where it
 * makes bursts (C > 0), rank `rank`'s split over the enlarged placement as the layer's splitter
 * makes it (smoe_split_for_rank with split_rpn and split_method, p where the method is "auto"),
 * on the counts with a zero column for the empty burst slots' id E (burst.pad_counts): send_K,
 * recv_QS [N*S'], load_x [N], *node_local, planned_x (its arrays the caller's: demand_K [N*S'],
 * sums [4*N]); its conservation checks (smoe_check_rank_split, splitter._conserves); and the
 * enlarged placement's send order (dispatch.slot_order): perm_K [N*S'] the slots by expert,
 * stable, inv_K its inverse. S' = *out_S; the split's outputs are left alone when C is 0.
 * Returns C >= 0, SMOE_ECONSERVE when the split fails its checks (a bug), or an error. */
/* Tests only: when > 0, smoe_burst_step (and so smoe_layer_burst) and smoe_layer_split take that
 * many tokens (at most what it holds) from the first positive amount their split sends, before
 * its checks, which must then refuse it (SMOE_ECONSERVE). 0 in any other use. */
extern int64_t smoe_fault_tokens;
/* Tests only: when not 0, the burst decision evaluates every list of bursts it builds, also
 * those its lower bound shows cannot win, and fails with SMOE_EBUG where a list evaluates to
 * less than its bound. Its decisions are the same. 0 in any other use. */
extern int64_t smoe_check_bounds;
int64_t smoe_burst_step(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                        int64_t S, int64_t B, const smoe_cost *p, double threshold,
                        double gate_lo, double gate_hi, int method,
                        const int64_t *load_R, const smoe_planned *planned, int64_t *out_slots,
                        int64_t *out_S, int64_t *out_e, int64_t *out_q, int64_t *out_s,
                        int64_t *out_d, int64_t *out_j, double *out_ms, int64_t rank,
                        int64_t split_rpn, int split_method, int64_t *send_K, int64_t *recv_QS,
                        int64_t *load_x, int *node_local, smoe_planned *planned_x,
                        int64_t *perm_K, int64_t *inv_K);


/* smoe_burst_step's arguments but the counts, load_R, planned and the outputs, in one struct
 * (native.burst_step builds it per call). */
typedef struct {
    const int64_t *slots_K; /* [N*S] */
    int64_t N, E, S, B, rank, split_rpn;
    const smoe_cost *cost;
    double threshold, gate_lo, gate_hi;
    int method, split_method;
} smoe_burst_args;

/* smoe_layer_split's and smoe_layer_step's checks of a layer call's placement slots_K [N*S]
 * and counts c_QE [N, E]: SMOE_EBUG for a slot id outside 0..E-1 (the caller checks them;
 * kept memory, checked again), SMOE_ENEGATIVE (*bad = q*E + e, the first in row order) and
 * SMOE_EORPHAN (tokens for an expert without a slot, *bad = e, the first), or 0 (route.c). */
int smoe_check_layer(const int64_t *c_QE, const int64_t *slots_K, int64_t N, int64_t E,
                     int64_t S, int64_t *bad);

/* smoe_layer_burst's out, for NB = max(N*B, 1) and X = N*(S+B), one array after another:
 * S' [1], the enlarged placement [X] (row stride S'), the bursts' e, q, s, d, j [NB each], the
 * three ms [3] (doubles' bytes), then the enlarged split's send_K [X], recv_QS [X], load_x [N],
 * demand_K [X], sums [4*N], node_local [1], priced [1], ms [1] (a double's bytes), and perm_K
 * [X], inv_K [X]. */
#define SMOE_BURST_OUT(N, S, B)                                                                  \
    (1 + 6 * (N) * ((S) + (B)) + 5 * ((N) * (B) > 1 ? (N) * (B) : 1) + 3 + 5 * (N) + 3)

/* smoe_burst_step with a's arguments, seven in all (the Python call's conversions of thirty
 * took about a third of the step's time): c_QE [N, E]; load_R [N] or NULL; planned: NULL, or
 * the split on the planned placement as one array, its demand_K [N*S] then, where priced, its
 * sums [4*N]; planned_ms and priced its price; out [SMOE_BURST_OUT(N, S, B)]. a's slot ids are
 * checked on every call (the caller's memory, kept between calls): SMOE_EBUG for one outside
 * 0..E-1. Returns C >= 0, SMOE_ECONSERVE when the enlarged split fails its checks (a bug), or
 * an error. */
int64_t smoe_layer_burst(const smoe_burst_args *a, const int64_t *c_QE, const int64_t *load_R,
                         const int64_t *planned, double planned_ms, int priced, int64_t *out);

/* A layer call's whole host step in one call: smoe_layer_split's checks and split of the
 * planned placement, and where its loads pass the threshold smoe_layer_burst's step, which
 * starts from that split's stage 1. The split's method and rpn must be the decision's (a's
 * split_method = method, split_rpn = the cost's ranks_per_node: SMOE_EBUG otherwise; the
 * caller checks). c_QE [N, E]; out [SMOE_BURST_OUT(N, S, B) + 1], laid out as
 * smoe_layer_burst's, then bad [1]. Returns C > 0 where bursts are made (out as
 * smoe_layer_burst's), or 0 where none are: S' = S, and the split section holds the planned
 * placement's split (its arrays of X entries, N*S used); the bursts' fields and perm_K, inv_K
 * are then left alone, and the three ms are the decision's (0 where the threshold was not
 * passed, before_ms twice where it made none). The split's checks fail with SMOE_ECONSERVE (a
 * bug), the counts' with SMOE_ENEGATIVE or SMOE_EORPHAN and bad (smoe_check_layer); or another
 * error (burst.c). */
int64_t smoe_layer_step(const smoe_burst_args *a, const int64_t *c_QE, int64_t *out);

#endif
