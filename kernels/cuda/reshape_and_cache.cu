// Writes this step's new K and V rows into the paged KV cache.
//
//   key, value            [num_tokens, num_kv_heads, head_dim]; token rows `key_stride` /
//                         `value_stride` elements apart (heads and head_dim contiguous), so a
//                         K or V slice of a fused QKV output can be passed without a copy
//   key_cache, value_cache [num_blocks, block_size, num_kv_heads, head_dim], contiguous
//   slot_mapping          [num_tokens]; slot = block * block_size + offset_in_block
//
// A slot that is negative (i64), equal to 0xFFFFFFFF (u32), or >= num_slots
// (= num_blocks * block_size) marks a token whose K/V is not cached (padding): it is skipped.
// `value` and `value_cache` may both be null: then only K is written (one tensor per launch, as
// an in-place op on a single cache tensor does).
//
// Launch: grid = (num_tokens, 1, 1), any 1-D block (e.g. 128 threads); each CUDA block copies one
// token's K row and V row. The copy is dtype-blind
// (the cache has the input's dtype), so it moves 16-byte vectors whenever sizes, strides and
// pointers allow, and single elements otherwise.
//
// Entry points (all with the same argument list, slot type aside):
//   reshape_and_cache_{f32,f16,bf16}       int64_t slot_mapping
//   reshape_and_cache_{f32,f16,bf16}_u32   uint32_t slot_mapping

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace flint {

__device__ __forceinline__ bool slot_valid(int64_t slot, int64_t num_slots) {
  return slot >= 0 && slot < num_slots;
}
__device__ __forceinline__ bool slot_valid(uint32_t slot, int64_t num_slots) {
  return slot != 0xFFFFFFFFu && (int64_t)slot < num_slots;
}

// Copies `n` elements of type V from src to dst, strided over the CUDA block's threads.
template <typename V>
__device__ __forceinline__ void copy_row(const V* __restrict__ src, V* __restrict__ dst, int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    dst[i] = src[i];
  }
}

template <typename T, typename Slot>
__device__ __forceinline__ void reshape_and_cache(
    const T* __restrict__ key, const T* __restrict__ value, T* __restrict__ key_cache,
    T* __restrict__ value_cache, const Slot* __restrict__ slot_mapping, int64_t key_stride,
    int64_t value_stride, int32_t num_kv_heads, int32_t head_dim, int64_t num_slots) {
  const int64_t token = blockIdx.x;
  const Slot slot = slot_mapping[token];
  if (!slot_valid(slot, num_slots)) {
    return;
  }
  const int64_t row = (int64_t)num_kv_heads * head_dim;
  const T* k_src = key + token * key_stride;
  T* k_dst = key_cache + (int64_t)slot * row;
  const bool has_v = value != nullptr && value_cache != nullptr;
  const T* v_src = has_v ? value + token * value_stride : nullptr;
  T* v_dst = has_v ? value_cache + (int64_t)slot * row : nullptr;

  // 16-byte vectors when every row start is 16-byte aligned (uniform across the CUDA block).
  constexpr int64_t kVec = 16 / sizeof(T);
  const bool vec_ok = (row % kVec == 0) && (key_stride % kVec == 0) &&
                      (!has_v || value_stride % kVec == 0) &&
                      ((reinterpret_cast<uintptr_t>(key) | reinterpret_cast<uintptr_t>(value) |
                        reinterpret_cast<uintptr_t>(key_cache) |
                        reinterpret_cast<uintptr_t>(value_cache)) % 16 == 0);
  if (vec_ok) {
    copy_row(reinterpret_cast<const uint4*>(k_src), reinterpret_cast<uint4*>(k_dst), row / kVec);
    if (has_v) {
      copy_row(reinterpret_cast<const uint4*>(v_src), reinterpret_cast<uint4*>(v_dst), row / kVec);
    }
  } else {
    copy_row(k_src, k_dst, row);
    if (has_v) {
      copy_row(v_src, v_dst, row);
    }
  }
}

}  // namespace flint

#define FLINT_RESHAPE_AND_CACHE(NAME, T, SLOT)                                                    \
  extern "C" __global__ void NAME(const T* __restrict__ key, const T* __restrict__ value,        \
                                  T* __restrict__ key_cache, T* __restrict__ value_cache,        \
                                  const SLOT* __restrict__ slot_mapping, int64_t key_stride,     \
                                  int64_t value_stride, int32_t num_kv_heads, int32_t head_dim,  \
                                  int64_t num_slots) {                                           \
    flint::reshape_and_cache<T, SLOT>(key, value, key_cache, value_cache, slot_mapping,          \
                                      key_stride, value_stride, num_kv_heads, head_dim,          \
                                      num_slots);                                                \
  }

FLINT_RESHAPE_AND_CACHE(reshape_and_cache_f32, float, int64_t)
FLINT_RESHAPE_AND_CACHE(reshape_and_cache_f16, __half, int64_t)
FLINT_RESHAPE_AND_CACHE(reshape_and_cache_bf16, __nv_bfloat16, int64_t)
FLINT_RESHAPE_AND_CACHE(reshape_and_cache_f32_u32, float, uint32_t)
FLINT_RESHAPE_AND_CACHE(reshape_and_cache_f16_u32, __half, uint32_t)
FLINT_RESHAPE_AND_CACHE(reshape_and_cache_bf16_u32, __nv_bfloat16, uint32_t)
