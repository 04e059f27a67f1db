// Batched multi-adapter LoRA ("BGMV"), as kernels/src/lora.rs: every token gets the low-rank
// delta of its own adapter slot, in two passes through an f32 buffer of rank values.
//
//   x            [num_tokens, d_in], contiguous, storage type T
//   a            [num_slots, max_rank, d_in]   (stacked A, zero-padded past each slot's rank)
//   b            [num_slots, max_rank, d_out]  (stacked B transposed, likewise; consecutive
//                outputs are adjacent, so the expand reads coalesce)
//   out          [num_tokens, d_out], type T
//   mid          f32 [num_tokens, max_rank]
//   token_slots  u32 [num_tokens]: a slot index, or 0xffffffff (NO_SLOT) for no adapter
//   slot_params  u32 [num_slots][2] = (bits of the f32 scale, rank)
//
// A token is active when its slot is < num_slots and that slot's scale is non-zero; its
// effective rank is min(rank, max_rank). Inactive tokens get zero rows, as do rank values past
// the effective rank. Everything accumulates in f32; out is rounded to T once.
//
// Entry points, T in {f32, f16, bf16}:
//
// lora_shrink_{T}(mid, x, a, token_slots, slot_params, num_slots, max_rank, d_in)
//   mid[t][r] = scale[s] * dot(a[s][r], x[t]) for r < rank, else 0 (s = token_slots[t]).
//   grid = (num_tokens, ceil(max_rank / warps)), block = warps * 32 threads (any number of
//   warps); warp w of CUDA block (t, y) computes rank value r = y * warps + w of token t.
//
// lora_expand_{T}(out, mid, b, token_slots, slot_params, num_slots, max_rank, d_out)
//   out[t][o] = T(sum_{r < rank} b[s][r][o] * mid[t][r]), in order of r.
//   grid = (num_tokens, ceil(d_out / threads)), any 1-D block; each thread one output o, the
//   token's rank values staged through shared memory in chunks of 256.

#include "common.cuh"

namespace flint {

constexpr int kRankChunk = 256;

// The effective rank of token t (0 when it has no active adapter) and its scale.
__device__ __forceinline__ int active_rank(const uint32_t* token_slots, const uint32_t* slot_params,
                                           int t, int num_slots, int max_rank, uint32_t* slot,
                                           float* scale) {
  const uint32_t s = token_slots[t];
  *slot = s;
  *scale = 0.f;
  if (s >= (uint32_t)num_slots) return 0;
  *scale = __uint_as_float(slot_params[2 * s]);
  if (*scale == 0.f) return 0;
  return (int)min(slot_params[2 * s + 1], (uint32_t)max_rank);
}

template <typename T>
__device__ void lora_shrink(float* __restrict__ mid, const T* __restrict__ x,
                            const T* __restrict__ a, const uint32_t* __restrict__ token_slots,
                            const uint32_t* __restrict__ slot_params, int num_slots, int max_rank,
                            int d_in) {
  const int t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = blockIdx.y * (blockDim.x >> 5) + warp;
  if (r >= max_rank) return;  // whole warps leave together
  uint32_t s;
  float scale;
  const int rank = active_rank(token_slots, slot_params, t, num_slots, max_rank, &s, &scale);
  float acc = 0.f;
  if (r < rank) {  // uniform over the warp
    const T* xt = x + (int64_t)t * d_in;
    const T* ar = a + ((int64_t)s * max_rank + r) * d_in;
    for (int i = lane; i < d_in; i += 32) acc += to_float(ar[i]) * to_float(xt[i]);
    acc = scale * warp_sum(acc);
  }
  if (lane == 0) mid[(int64_t)t * max_rank + r] = acc;
}

template <typename T>
__device__ void lora_expand(T* __restrict__ out, const float* __restrict__ mid,
                            const T* __restrict__ b, const uint32_t* __restrict__ token_slots,
                            const uint32_t* __restrict__ slot_params, int num_slots, int max_rank,
                            int d_out) {
  __shared__ float sm_mid[kRankChunk];
  const int t = blockIdx.x;
  const int o = blockIdx.y * blockDim.x + threadIdx.x;
  uint32_t s;
  float scale;
  const int rank = active_rank(token_slots, slot_params, t, num_slots, max_rank, &s, &scale);
  const float* mt = mid + (int64_t)t * max_rank;
  float acc = 0.f;
  // rank is uniform over the block, so every thread takes the barriers below.
  for (int r0 = 0; r0 < rank; r0 += kRankChunk) {
    const int n = min(rank - r0, kRankChunk);
    __syncthreads();  // the previous chunk has been read
    for (int i = threadIdx.x; i < n; i += blockDim.x) sm_mid[i] = mt[r0 + i];
    __syncthreads();
    if (o < d_out) {
      const T* bo = b + ((int64_t)s * max_rank + r0) * d_out + o;
      for (int i = 0; i < n; ++i) acc += to_float(bo[(int64_t)i * d_out]) * sm_mid[i];
    }
  }
  if (o < d_out) out[(int64_t)t * d_out + o] = from_float<T>(acc);
}

}  // namespace flint

#define FLINT_LORA(SUFFIX, T)                                                                   \
  extern "C" __global__ void lora_shrink_##SUFFIX(float* mid, const T* x, const T* a,           \
                                                  const uint32_t* token_slots,                  \
                                                  const uint32_t* slot_params, int32_t num_slots, \
                                                  int32_t max_rank, int32_t d_in) {             \
    flint::lora_shrink<T>(mid, x, a, token_slots, slot_params, num_slots, max_rank, d_in);      \
  }                                                                                             \
  extern "C" __global__ void lora_expand_##SUFFIX(T* out, const float* mid, const T* b,         \
                                                  const uint32_t* token_slots,                  \
                                                  const uint32_t* slot_params, int32_t num_slots, \
                                                  int32_t max_rank, int32_t d_out) {            \
    flint::lora_expand<T>(out, mid, b, token_slots, slot_params, num_slots, max_rank, d_out);   \
  }

FLINT_LORA(f32, float)
FLINT_LORA(f16, __half)
FLINT_LORA(bf16, __nv_bfloat16)
