// Sampling: a batch of logits rows to one token id per row (kernels/src/sampling/mod.rs has
// the semantics; kernels/src/sampling/cpu.rs is the reference this mirrors bit for bit).
//
// sample_rows_{T}(logits, row_stride, vocab, params, adj_offsets, adj_tokens, adj_params,
//                 adj_values, out)
//   logits      row r at logits + r * row_stride, `vocab` contiguous elements of T
//   params      u32 [rows, 5]: temperature bits, top_k, top_p bits, min_p bits, uniform bits
//   adj_offsets u32 [rows + 1]: row r's adjustments are entries adj_offsets[r]..adj_offsets[r+1]
//   adj_tokens  u32 [entries], sorted by token within a row, no duplicates
//   adj_params  f32 [entries, 4]: bias, pos_scale, neg_scale, add
//   adj_values  f32 [entries]: scratch, the adjusted logits (written here, then read back)
//   out         u32 [rows]
//   grid = rows, block = SAMPLING_THREADS; dynamic shared memory: ceil(vocab / 32) u32 when
//   any row has adjustments (a bitmap of the row's adjusted tokens), else none.
//
// Every float operation whose rounding matters is an explicit __f*_rn intrinsic, which nvcc
// never contracts into an FMA, so the results equal the CPU's separately rounded f32 ops.
// All sums are u64 integers (order-independent, hence deterministic under atomics).

#include "common.cuh"

#define SAMPLING_THREADS 512

namespace flint {
namespace sampling {

constexpr int kWarps = SAMPLING_THREADS / 32;
constexpr uint32_t kNone = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Scalar helpers: twins of the ones in cpu.rs.

__device__ __forceinline__ float nan_to_neg_inf(float x) { return isnan(x) ? -INFINITY : x; }

// Cephes expf, op for op as cpu.rs's `exp`: 0 below -87 (and for NaN), saturating above 88.
__device__ __forceinline__ float exp_cephes(float x) {
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float xc = x > -87.0f ? x : -87.0f;
  xc = xc < 88.0f ? xc : 88.0f;
  const float t = __fadd_rn(__fmul_rn(xc, 1.44269504088896340736f), kMagic);
  const float n = __fsub_rn(t, kMagic);
  const float two_n = __uint_as_float((__float_as_uint(t) - __float_as_uint(kMagic) + 127u) << 23);
  const float r = __fsub_rn(__fsub_rn(xc, __fmul_rn(n, 0.6933594f)), __fmul_rn(n, -2.1219444e-4f));
  float p = __fadd_rn(__fmul_rn(1.9875691e-4f, r), 1.3981999e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 8.333452e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 4.1665796e-2f);
  p = __fadd_rn(__fmul_rn(p, r), 0.16666665f);
  p = __fadd_rn(__fmul_rn(p, r), 0.5f);
  const float y = __fmul_rn(__fadd_rn(__fadd_rn(__fmul_rn(p, __fmul_rn(r, r)), r), 1.0f), two_n);
  return x >= -87.0f ? y : 0.0f;
}

// w = exp((x - m) / T), in [0, 1]; exactly 1 at the maximum.
__device__ __forceinline__ float weight(float x, float m, float temp) {
  return exp_cephes(__fdiv_rn(__fsub_rn(x, m), temp));
}

// 32.32 fixed point of a weight in [0, 1], rounded down (the product is exact).
__device__ __forceinline__ uint64_t fixed(float w) { return (uint64_t)((double)w * 4294967296.0); }

// Float bits mapped so that unsigned order is float order (x not NaN; -0 taken as +0).
__device__ __forceinline__ uint32_t ordered(float x) {
  const uint32_t b = x == 0.0f ? 0u : __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float from_ordered(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// Sampling order as one integer: a larger key is earlier (higher x, then lower index).
__device__ __forceinline__ uint64_t make_key(float x, uint32_t i) {
  return ((uint64_t)ordered(x) << 32) | (uint64_t)(0xffffffffu - i);
}

__device__ __forceinline__ uint32_t key_index(uint64_t key) { return 0xffffffffu - (uint32_t)key; }

// ---------------------------------------------------------------------------------------------
// Block-wide u64 reductions and scan (blockDim.x == SAMPLING_THREADS).

struct Shared {
  unsigned long long hist[256];  // radix-select amounts per digit (counts or fixed-point mass)
  uint32_t cnt[256];             // tokens per digit
  uint64_t red[kWarps];          // per-warp partials
  uint64_t bcast[4];             // values thread(s) hand to the whole block
};

__device__ __forceinline__ uint64_t block_max(uint64_t v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, (uint64_t)__shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // red[] may still be read by a previous reduction
  if (lane == 0) sh.red[warp] = v;
  __syncthreads();
  uint64_t r = 0;
  for (int w = 0; w < kWarps; ++w) r = max(r, sh.red[w]);
  return r;
}

// Exclusive prefix sum over the block in thread order; `total` gets the block's sum.
__device__ __forceinline__ uint64_t block_exclusive_scan(uint64_t v, Shared& sh, uint64_t& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t up = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += up;
  }
  __syncthreads();
  if (lane == 31) sh.red[warp] = inc;
  __syncthreads();
  uint64_t before = 0;
  total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += sh.red[w];
    total += sh.red[w];
  }
  return before + inc - v;
}

// ---------------------------------------------------------------------------------------------
// One row, with its adjustments.

template <typename T>
struct Row {
  const T* raw;
  uint32_t vocab;
  const uint32_t* bitmap;  // shared memory; null when the row has no adjustments
  const uint32_t* tokens;  // the row's adjusted tokens, sorted
  const float* values;     // their adjusted values
  uint32_t n_adj;

  __device__ __forceinline__ float raw_at(uint32_t i) const { return nan_to_neg_inf(to_float(raw[i])); }

  __device__ __forceinline__ bool adjusted(uint32_t i) const {
    return bitmap != nullptr && ((bitmap[i >> 5] >> (i & 31)) & 1u);
  }

  // Adjusted value of any token (binary search among the row's sorted entries).
  __device__ float at(uint32_t i) const {
    if (!adjusted(i)) return raw_at(i);
    uint32_t lo = 0, hi = n_adj - 1;
    while (lo < hi) {
      const uint32_t mid = (lo + hi) / 2;
      if (tokens[mid] < i) lo = mid + 1; else hi = mid;
    }
    return values[lo];
  }

  // f(i, x) once for every token with its adjusted value, the tokens split over the threads:
  // unadjusted ones straight from the row (coalesced), adjusted ones from the entries. Only
  // for order-independent work (max, histogram atomics).
  template <class F>
  __device__ __forceinline__ void for_each(F f) const {
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x)
      if (!adjusted(i)) f(i, raw_at(i));
    for (uint32_t e = threadIdx.x; e < n_adj; e += blockDim.x) f(tokens[e], values[e]);
  }
};

// Warp 0: over hist[] (digit d's amount, digits in descending order of the keys they hold,
// i.e. 255 first), finds the digit where the running amount `above` (what the earlier digits
// of earlier levels already hold) plus the digits from 255 down first reaches `need`. With
// `from_total`, need = ceil(top_p * total of hist) first (top-p at level 0, above = 0).
// Writes bcast[0] = digit or kNone, bcast[1] = amount before that digit, bcast[2] = need.
__device__ void find_crossing(Shared& sh, uint64_t above, uint64_t need, bool from_total, float top_p) {
  const int lane = threadIdx.x;  // warp 0 only
  uint64_t h[8], t = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    h[j] = sh.hist[lane * 8 + j];
    t += h[j];
  }
  // Inclusive suffix sum over lanes: the amount of digits >= lane * 8.
  uint64_t suf = t;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t down = __shfl_down_sync(0xffffffffu, suf, o);
    if (lane + o < 32) suf += down;
  }
  if (from_total) need = (uint64_t)ceil((double)top_p * (double)__shfl_sync(0xffffffffu, suf, 0));
  if (lane == 0) {
    sh.bcast[0] = kNone;
    sh.bcast[2] = need;
  }
  __syncwarp();
  // Suffix sums grow as the lane falls, so exactly one lane holds the crossing when the total
  // reaches need (and above < need, the invariant of the caller).
  uint64_t acc = above + (suf - t);
  if (acc < need && need <= above + suf) {
    for (int j = 7; j >= 0; --j) {
      if (acc + h[j] >= need) {
        sh.bcast[0] = lane * 8 + j;
        sh.bcast[1] = acc;
        break;
      }
      acc += h[j];
    }
  }
}

// Radix select over the 64-bit keys, 8 bits a level from the top. Participants: tokens with
// w > 0 and key >= floor. Finds the shortest prefix of the participants in key order
// (descending) whose amount reaches the need (top-k: 1 a token, need k; top-p: q a token, need
// ceil(top_p * total)), and returns a threshold K such that the prefix is exactly the
// participants with key >= K; 0 when the participants never reach the need (no cut).
//
// Level by level, `prefix` holds the high digits of the crossing token's key and `above` the
// amount of participants with a higher prefix (all in the prefix of the order). A level
// histograms the next digit of the participants sharing `prefix`; the crossing digit extends
// it. The select stops early once the crossing digit's bucket has one token, or (top-k) when
// the whole bucket is needed: then every participant from the bucket's lowest key up is in,
// and the keys below the bucket are not. Non-participants inside [K, ..) can only be tokens
// with key < floor (the caller also requires key >= floor) or with w = 0 (also excluded).
template <typename T>
__device__ uint64_t radix_select(const Row<T>& row, Shared& sh, float m, float temp, uint64_t floor,
                                 bool by_mass, uint64_t need, float top_p) {
  uint64_t prefix = 0, above = 0;
  for (int level = 0; level < 8; ++level) {
    const int shift = 56 - 8 * level;
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
      sh.hist[d] = 0;
      sh.cnt[d] = 0;
    }
    __syncthreads();
    row.for_each([&](uint32_t i, float x) {
      const float w = weight(x, m, temp);
      const uint64_t key = make_key(x, i);
      if (!(w > 0.0f) || key < floor || (level > 0 && (key >> (shift + 8)) != prefix)) return;
      const uint32_t d = (uint32_t)(key >> shift) & 0xffu;
      // Most tokens share the top digits: the lanes of a warp holding the same digit count
      // into it once (their leader adds the group's size), sparing contended atomics. A lane
      // outside the current active set forms its own group, so the counts stay exact.
      const uint32_t group = __match_any_sync(__activemask(), d);
      if ((int)(threadIdx.x & 31) == __ffs(group) - 1) {
        atomicAdd(&sh.cnt[d], (uint32_t)__popc(group));
        if (!by_mass) atomicAdd(&sh.hist[d], (unsigned long long)__popc(group));
      }
      if (by_mass) atomicAdd(&sh.hist[d], (unsigned long long)fixed(w));
    });
    __syncthreads();
    if (threadIdx.x < 32) find_crossing(sh, above, need, by_mass && level == 0, top_p);
    __syncthreads();
    const uint32_t d = (uint32_t)sh.bcast[0];
    if (d == kNone) return 0;  // only at level 0: the participants' total is below need
    above = sh.bcast[1];
    need = sh.bcast[2];
    prefix = (prefix << 8) | d;
    const bool done = sh.cnt[d] == 1 || (!by_mass && above + sh.hist[d] == need) || shift == 0;
    __syncthreads();  // everyone has read hist/cnt/bcast before the next level clears them
    if (done) return prefix << shift;
  }
  return prefix;  // not reached: level 7 (shift 0) always finishes
}

template <typename T>
__device__ void sample_row(const T* __restrict__ logits, int64_t row_stride, uint32_t vocab,
                           const uint32_t* __restrict__ params, const uint32_t* __restrict__ adj_offsets,
                           const uint32_t* __restrict__ adj_tokens, const float* __restrict__ adj_params,
                           float* adj_values, uint32_t* __restrict__ out) {
  extern __shared__ uint32_t bitmap[];
  __shared__ Shared sh;
  const uint32_t r = blockIdx.x;
  const uint32_t* pr = params + 5 * (size_t)r;
  const float temp = __uint_as_float(pr[0]), top_p = __uint_as_float(pr[2]);
  const float min_p = __uint_as_float(pr[3]), uniform = __uint_as_float(pr[4]);
  const uint32_t top_k = pr[1];
  const uint32_t a0 = adj_offsets[r], n_adj = adj_offsets[r + 1] - a0;

  Row<T> row{logits + (int64_t)r * row_stride, vocab, nullptr, adj_tokens + a0, adj_values + a0, n_adj};

  // 1. Adjustments: mark the tokens in the bitmap and store their adjusted values. Later
  //    passes read every token exactly once, raw or adjusted (Row::for_each / Row::at).
  if (n_adj > 0) {
    const uint32_t words = (vocab + 31) / 32;
    for (uint32_t w = threadIdx.x; w < words; w += blockDim.x) bitmap[w] = 0;
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < n_adj; e += blockDim.x) {
      const uint32_t tok = adj_tokens[a0 + e];
      const float* ap = adj_params + 4 * (size_t)(a0 + e);
      atomicOr(&bitmap[tok >> 5], 1u << (tok & 31));
      const float y = __fadd_rn(row.raw_at(tok), ap[0]);
      const float s = y > 0.0f ? __fmul_rn(y, ap[1]) : __fmul_rn(y, ap[2]);
      adj_values[a0 + e] = nan_to_neg_inf(__fadd_rn(s, ap[3]));
    }
    __syncthreads();  // bitmap and adj_values visible to the whole block
    row.bitmap = bitmap;
  }

  // 2. The argmax of the adjusted row (max key: first index on ties) and its value m.
  uint64_t best = 0;
  row.for_each([&](uint32_t i, float x) { best = max(best, make_key(x, i)); });
  best = block_max(best, sh);
  const float m = from_ordered((uint32_t)(best >> 32));
  if (m == -INFINITY) {
    // Everything masked: the raw argmax (index 0 when that is all -inf too, as the max key of
    // equal values is the lowest index's).
    uint64_t raw_best = 0;
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) raw_best = max(raw_best, make_key(row.raw_at(i), i));
    raw_best = block_max(raw_best, sh);
    if (threadIdx.x == 0) out[r] = key_index(raw_best);
    return;
  }
  if (temp == 0.0f || top_k == 1 || m == INFINITY) {
    if (threadIdx.x == 0) out[r] = key_index(best);
    return;
  }

  // 3. The cuts, as one key threshold: kept = w > 0, key >= thr, w >= min_p. Top-k first;
  //    top-p among what top-k kept (floor = its threshold); min-p is a plain weight test.
  uint64_t thr = 0;
  if (top_k > 0) thr = radix_select(row, sh, m, temp, 0, false, top_k, 0.0f);
  if (top_p < 1.0f) thr = max(thr, radix_select(row, sh, m, temp, thr, true, 0, top_p));

  // 4. The draw in vocabulary order: each thread owns a contiguous segment, the scan of the
  //    segments' kept mass gives every segment its starting cumulative sum, and the one
  //    segment whose range [before, before + sum) holds the target walks its tokens.
  const uint32_t seg = (vocab + blockDim.x - 1) / blockDim.x;
  const uint32_t lo = min(vocab, threadIdx.x * seg), hi = min(vocab, lo + seg);
  // Whether token i is kept, with its mass in q (0 when it is not).
  auto kept = [&](uint32_t i, uint64_t& mass) -> bool {
    const float x = row.at(i);
    const float w = weight(x, m, temp);
    const bool keep = w > 0.0f && w >= min_p && make_key(x, i) >= thr;
    mass = keep ? fixed(w) : 0;
    return keep;
  };
  uint64_t sum = 0, q;
  uint32_t last = 0;  // 1 + the segment's last kept index, 0 when none
  for (uint32_t i = lo; i < hi; ++i) {
    if (kept(i, q)) last = i + 1;
    sum += q;
  }
  uint64_t total;
  const uint64_t before = block_exclusive_scan(sum, sh, total);
  // floor(uniform * total) < total: total >= 2^32 (the top token) and uniform <= 1 - 2^-24.
  const uint64_t target = (uint64_t)((double)uniform * (double)total);
  if (threadIdx.x == 0) sh.bcast[3] = kNone;
  __syncthreads();
  if (before <= target && target < before + sum) {
    uint64_t cum = before;
    for (uint32_t i = lo; i < hi; ++i) {
      kept(i, q);
      cum += q;
      if (target < cum) {
        out[r] = i;
        sh.bcast[3] = i;
        break;
      }
    }
  }
  // Never taken (see above); kept as the CPU's fallback: the last kept token.
  last = (uint32_t)block_max(last, sh);  // its barrier also orders bcast[3]
  if (threadIdx.x == 0 && sh.bcast[3] == kNone) out[r] = last > 0 ? last - 1 : key_index(best);
}

}  // namespace sampling
}  // namespace flint

#define FLINT_SAMPLING(SUFFIX, T)                                                               \
  extern "C" __global__ void __launch_bounds__(SAMPLING_THREADS) sample_rows_##SUFFIX(         \
      const T* logits, int64_t row_stride, uint32_t vocab, const uint32_t* params,              \
      const uint32_t* adj_offsets, const uint32_t* adj_tokens, const float* adj_params,          \
      float* adj_values, uint32_t* out) {                                                        \
    flint::sampling::sample_row<T>(logits, row_stride, vocab, params, adj_offsets, adj_tokens,  \
                                   adj_params, adj_values, out);                                 \
  }

FLINT_SAMPLING(f32, float)
FLINT_SAMPLING(f16, __half)
FLINT_SAMPLING(bf16, __nv_bfloat16)
