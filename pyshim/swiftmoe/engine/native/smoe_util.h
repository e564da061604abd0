/* Integer helpers shared by the C files of this folder (split.c, route.c): internal to them,
 * not part of the library's interface (smoe.h is). Every helper is static inline, so each file
 * that includes this one gets its own copy and an unused one costs nothing. */
#ifndef SMOE_UTIL_H
#define SMOE_UTIL_H

#include <stdint.h>

static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* Python's a // b (b != 0). */
static inline int64_t floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

/* Python's a % b (b != 0). */
static inline int64_t floormod(int64_t a, int64_t b)
{
    int64_t m = a % b;
    if (m != 0 && ((m < 0) != (b < 0)))
        m += b;
    return m;
}

/* tiers.proportional of one group's amounts a[0..n-1] into out[0..n-1] (out may be a: each
 * a[i] is read before out[i] is written): floors of a * m / max(tot, 1), then one more to the
 * first members (in order) with a fraction until the group's sum is m. frac: n bytes of
 * scratch. Integers only. Taking nothing (m = 0) or everything (m = tot > 0) needs no division:
 * every floor is exact and no member has a fraction. */
static inline void proportional(const int64_t *a, int64_t n, int64_t tot, int64_t m, int64_t *out,
                                unsigned char *frac)
{
    if (m == 0 || (m == tot && tot > 0)) { /* nothing, or all of it: a * m / tot exactly */
        for (int64_t i = 0; i < n; i++)
            out[i] = m == 0 ? 0 : a[i];
        return;
    }
    int64_t t = imax(tot, 1), short_ = m;
    for (int64_t i = 0; i < n; i++) {
        int64_t num = a[i] * m;
        out[i] = floordiv(num, t);
        frac[i] = floormod(num, t) > 0;
        short_ -= out[i];
    }
    int64_t nth = 0;
    for (int64_t i = 0; i < n && nth < short_; i++)
        if (frac[i])
            out[i]++, nth++;
}

/* smoe_fault_tokens' fault (smoe.h; tests only): take up to `tokens` from the first positive of
 * send_K[0..K-1], what a split that loses tokens would send. */
static inline void fault_tokens(int64_t *send_K, int64_t K, int64_t tokens)
{
    for (int64_t k = 0; k < K; k++)
        if (send_K[k] > 0) {
            send_K[k] -= imin(send_K[k], tokens);
            return;
        }
}

#endif /* SMOE_UTIL_H */
