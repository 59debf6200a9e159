/* Single-query decode attention on CPU, fp32, grouped-query heads unexpanded.
 *
 * Built on first use by sdd_plugin/generation/hf/kernel.py with the system C compiler and loaded
 * with ctypes.
 * Each batch row attends one contiguous run of cache columns from start[b]: the decode engine
 * keeps every row's cache as [left padding | prompt | generated], so the padding is never read.
 * A row may bring Q > 1 new tokens (prompt-lookup verification), causal among themselves.
 * Per (row, key/value head): scores of its G x Q queries against the run's keys (one pass over
 * K), a softmax, and the weighted sum of the values (one pass over V). Rows x heads are split
 * over `nthreads` threads by column count: OpenMP when built with -fopenmp (the library then
 * shares the libgomp that torch loaded, and its thread pool), else POSIX threads. Plain C with
 * GCC/Clang vector extensions; no intrinsics, so -march=native picks the widest vectors the
 * machine has. A prefix every row shares (system prompt and template header) may be read from
 * row 0 for all rows, so its keys and values come from cache instead of memory once per row.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

#define MAX_GROUP 64
#define MAX_THREADS 64

static inline v8 ld(const float *p) { v8 r; memcpy(&r, p, sizeof r); return r; }
static inline void st(float *p, v8 x) { memcpy(p, &x, sizeof x); }
static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline float hsum(v8 x) {
  return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
}
static inline v8 blend(v8i m, v8 a, v8 b) { /* m ? a : b, lane-wise */
  v8i ai, bi, r;
  v8 o;
  memcpy(&ai, &a, sizeof ai);
  memcpy(&bi, &b, sizeof bi);
  r = (ai & m) | (bi & ~m);
  memcpy(&o, &r, sizeof o);
  return o;
}

/* exp(x) for x <= 0 (scores minus their max): Cephes expf, 2^n * p(r), relative error ~1e-7. */
static inline v8 vexp(v8 x) {
  x = blend(x < splat(-87.3f), splat(-87.3f), x);
  v8 fx = x * splat(1.44269504088896341f) + splat(0.5f);
  v8i n = __builtin_convertvector(fx, v8i);
  v8 fn = __builtin_convertvector(n, v8);
  fn = blend(fn > fx, fn - splat(1.f), fn); /* floor */
  n = __builtin_convertvector(fn, v8i);
  x = x - fn * splat(0.693359375f) - fn * splat(-2.12194440e-4f);
  v8 y = splat(1.9875691500E-4f);
  y = y * x + splat(1.3981999507E-3f);
  y = y * x + splat(8.3334519073E-3f);
  y = y * x + splat(4.1665795894E-2f);
  y = y * x + splat(1.6666665459E-1f);
  y = y * x + splat(5.0000001201E-1f);
  y = y * x * x + x + splat(1.f);
  v8i e = (n + 127) << 23;
  v8 p;
  memcpy(&p, &e, sizeof p);
  return y * p;
}

/* Column j of a row whose first `ns` columns are read from the shared copy. */
static inline const float *column(const float *shared, const float *own, long ns, long j, int D) {
  return (j < ns ? shared : own) + j * D;
}

/* One (row, kv head): q [G][D] (G = heads x queries, query i of a head is row g with
 * g % Q == i), k/v [L][D] (columns j < ns from ks/vs instead), out [G][D]; s is scratch of
 * G * L floats. Query i attends the first `open + i` columns (causal among the row's Q new
 * tokens, which are the last Q - 1 columns). */
static void attend(const float *q, const float *k, const float *v, const float *ks, const float *vs,
                   long ns, float *out, long L, int G, int Q, long open, int D, float scale, float *s) {
  for (int g0 = 0; g0 < G; g0 += 4) { /* scores, four query heads and two columns at a time */
    int gn = G - g0 < 4 ? G - g0 : 4;
    const float *qb = q + (long)g0 * D;
    float *sb = s + (long)g0 * L;
    long j = 0;
    for (; j + 2 <= L; j += 2) {
      const float *k0 = column(ks, k, ns, j, D), *k1 = column(ks, k, ns, j + 1, D);
      v8 a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
      for (int d = 0; d < D; d += 8) {
        v8 x0 = ld(k0 + d), x1 = ld(k1 + d), qv = ld(qb + d);
        a00 += qv * x0;
        a01 += qv * x1;
        if (gn > 1) { qv = ld(qb + D + d); a10 += qv * x0; a11 += qv * x1; }
        if (gn > 2) { qv = ld(qb + 2 * D + d); a20 += qv * x0; a21 += qv * x1; }
        if (gn > 3) { qv = ld(qb + 3 * D + d); a30 += qv * x0; a31 += qv * x1; }
      }
      sb[j] = hsum(a00) * scale;
      sb[j + 1] = hsum(a01) * scale;
      if (gn > 1) { sb[L + j] = hsum(a10) * scale; sb[L + j + 1] = hsum(a11) * scale; }
      if (gn > 2) { sb[2 * L + j] = hsum(a20) * scale; sb[2 * L + j + 1] = hsum(a21) * scale; }
      if (gn > 3) { sb[3 * L + j] = hsum(a30) * scale; sb[3 * L + j + 1] = hsum(a31) * scale; }
    }
    for (; j < L; j++)
      for (int g = 0; g < gn; g++) {
        v8 a = {0};
        for (int d = 0; d < D; d += 8) a += ld(qb + (long)g * D + d) * ld(column(ks, k, ns, j, D) + d);
        sb[(long)g * L + j] = hsum(a) * scale;
      }
  }
  float inv[MAX_GROUP];
  for (int g = 0; g < G; g++) { /* softmax */
    float *sg = s + (long)g * L, m = -INFINITY, sum;
    for (long j = open + g % Q; j < L; j++) sg[j] = -INFINITY; /* a later new token */
    for (long j = 0; j < L; j++) m = sg[j] > m ? sg[j] : m;
    v8 acc = {0};
    long j = 0;
    for (; j + 8 <= L; j += 8) {
      v8 e = vexp(ld(sg + j) - splat(m));
      st(sg + j, e);
      acc += e;
    }
    sum = hsum(acc);
    for (; j < L; j++) {
      sg[j] = expf(sg[j] - m);
      sum += sg[j];
    }
    inv[g] = 1.f / sum;
  }
  memset(out, 0, sizeof(float) * G * D);
  for (long j = 0; j < L; j++) { /* weighted sum of the values */
    const float *vj = column(vs, v, ns, j, D);
    for (int g = 0; g < G; g++) {
      v8 p = splat(s[(long)g * L + j]);
      float *og = out + (long)g * D;
      for (int d = 0; d < D; d += 8) st(og + d, ld(og + d) + p * ld(vj + d));
    }
  }
  for (int g = 0; g < G; g++)
    for (int d = 0; d < D; d++) out[(long)g * D + d] *= inv[g];
}

typedef struct {
  const float *q, *k, *v;
  float *out;
  long q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, o_sb, o_sh;
  const long *start, *stop;
  long shared, end, item0, item1;
  int kv_heads, group, queries, dim;
  float scale;
  int failed;
} job_t;

/* Row b's first query attends up to this column (exclusive): stop[b], or the last column. */
static inline long stop_column(const long *stop, long end, int queries, long b) {
  return stop ? stop[b] : end - queries + 1;
}

static void *run(void *arg) {
  job_t *J = (job_t *)arg;
  long longest = 1;
  for (long it = J->item0; it < J->item1; it++) {
    long b = it / J->kv_heads, L = stop_column(J->stop, J->end, J->queries, b) + J->queries - 1 - J->start[b];
    if (L > longest) longest = L;
  }
  float *s = (float *)malloc(sizeof(float) * longest * J->group * J->queries);
  if (!s) {
    J->failed = 1;
    return 0;
  }
  for (long it = J->item0; it < J->item1; it++) {
    long b = it / J->kv_heads, h = it % J->kv_heads, c = J->start[b], c0 = J->start[0];
    long open = stop_column(J->stop, J->end, J->queries, b) - c;
    attend(J->q + b * J->q_sb + h * J->q_sh, J->k + b * J->k_sb + h * J->k_sh + c * J->dim,
           J->v + b * J->v_sb + h * J->v_sh + c * J->dim, J->k + h * J->k_sh + c0 * J->dim,
           J->v + h * J->v_sh + c0 * J->dim, J->shared, J->out + b * J->o_sb + h * J->o_sh,
           open + J->queries - 1, J->group * J->queries, J->queries, open, J->dim, J->scale, s);
  }
  free(s);
  return 0;
}

/* q [B, KVH, G * Q, D] (G query heads per key/value head, Q queries per row; row g * Q + i is
 * head g, query i; D contiguous), k/v [B, KVH, >= end, D] (D contiguous, column stride D), out
 * like q; strides in floats. Query i of row b attends columns [start[b], stop[b] + i): stop NULL
 * means end - Q + 1 for every row (the new tokens are each row's last Q columns). `shared` > 0
 * is the caller's promise that columns [start[b], start[b] + shared) of every row b hold what
 * row 0's [start[0], start[0] + shared) hold; they are then read from row 0. Returns 0, or 1 for
 * an unsupported shape (G * Q > 64, D not a multiple of 8), 2 for a row whose columns are not
 * inside [0, end) or shorter than `shared`, 3 if out of memory. */
int sdd_decode_attention(const float *q, long q_sb, long q_sh, const float *k, long k_sb, long k_sh,
                         const float *v, long v_sb, long v_sh, float *out, long o_sb, long o_sh,
                         const long *start, const long *stop, long shared, long end, long batch, int kv_heads,
                         int group, int queries, int dim, float scale, int nthreads) {
  if (group < 1 || queries < 1 || group * queries > MAX_GROUP || dim < 8 || dim % 8 || kv_heads < 1) return 1;
  long items = batch * kv_heads, total = 0;
  for (long b = 0; b < batch; b++) {
    long to = stop_column(stop, end, queries, b);
    if (start[b] < 0 || to <= start[b] || to + queries - 1 > end || shared < 0 || to - start[b] < shared)
      return 2;
    total += (to + queries - 1 - start[b]) * kv_heads;
  }
  if (nthreads < 1) nthreads = 1;
  if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
  if (nthreads > items) nthreads = (int)items;
  job_t jobs[MAX_THREADS];
  long it = 0, acc = 0;
  for (int t = 0; t < nthreads; t++) { /* contiguous item ranges with about equal columns */
    job_t J = {q, k, v, out, q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, o_sb, o_sh, start, stop, shared, end, it, it,
               kv_heads, group, queries, dim, scale, 0};
    long target = total * (t + 1) / nthreads;
    while (it < items && (acc < target || t == nthreads - 1)) {
      long b = it / kv_heads;
      acc += stop_column(stop, end, queries, b) + queries - 1 - start[b];
      it++;
    }
    J.item1 = it;
    jobs[t] = J;
  }
#ifdef _OPENMP
  /* loaded after torch, libgomp.so.1 resolves to torch's own: its (already spinning) threads */
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
  for (int t = 0; t < nthreads; t++) run(&jobs[t]);
#else
  pthread_t tid[MAX_THREADS];
  int started[MAX_THREADS] = {0};
  for (int t = 1; t < nthreads; t++) started[t] = pthread_create(&tid[t], 0, run, &jobs[t]) == 0;
  run(&jobs[0]);
  for (int t = 1; t < nthreads; t++) {
    if (started[t])
      pthread_join(tid[t], 0);
    else
      run(&jobs[t]); /* no thread: do its share here */
  }
#endif
  int failed = 0;
  for (int t = 0; t < nthreads; t++) failed |= jobs[t].failed;
  return failed ? 3 : 0;
}
