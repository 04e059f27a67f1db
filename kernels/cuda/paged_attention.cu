// Attention over the paged KV cache. Layouts as in kernels/src/paged/mod.rs:
//
//   q, out                 [num_tokens, heads, head_dim], contiguous, storage type T
//   key_cache, value_cache [num_blocks, block_size, kv_heads, head_dim], contiguous
//   seqs                   u32 [num_seqs][3] = (query_start, query_len, context_len)
//   block_tables           u32 [num_seqs][max_blocks]
//   tiles                  u32 [num_tiles][2] = (seq, first query row of the tile within seq)
//
// Query row r of a sequence is context position context_len - query_len + r and attends to
// positions 0..=that (causal). heads is a multiple of kv_heads (GQA); head_dim <= 256.
// Scores are computed in f32 as (q * scale) . k, with an online (streaming) softmax, so no
// context length is too long for shared memory.
//
// Entry points, T in {f32, f16, bf16}:
//
// paged_attention_decode_{T}: every sequence has query_len == 1.
//   grid = (heads, num_seqs, num_partitions), block = 128 threads (4 warps, each taking every
//   4th key). partition_size == 0: one partition covers the whole context and the result goes to
//   `out`. partition_size > 0 (split-K, for long contexts): CUDA block z covers positions
//   [z * partition_size, (z + 1) * partition_size) and writes its unnormalised accumulator to
//   part_acc [num_seqs, heads, max_parts, head_dim] and (max, sum) to part_ml
//   [num_seqs, heads, max_parts, 2]; paged_attention_reduce_{T} then combines them.
//
// paged_attention_reduce_{T}: grid = (heads, num_seqs), block = 128 threads.
//
// paged_attention_prefill_{T}: any mix of query lengths (prefill, chunked prefill, decode).
//   grid = (heads, num_tiles), block = 128 threads; one CUDA block handles up to 16 query rows
//   of one sequence and one head, streaming the context through shared memory in tiles of
//   KT keys (KT = 16 for head_dim <= 128, else 8). Dynamic shared memory:
//   (16 * head_dim + 2 * KT * (head_dim + 1)) * 4 bytes.

#include "common.cuh"

namespace flint {

constexpr int kWarps = 4;
constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256
constexpr int kTileQ = 16;
constexpr int kRowsPerWarp = kTileQ / kWarps;

__device__ __forceinline__ int64_t kv_offset(const uint32_t* table, int pos, int block_size,
                                             int kv_heads, int g, int head_dim) {
  const int64_t slot = (int64_t)table[pos / block_size] * block_size + pos % block_size;
  return (slot * kv_heads + g) * head_dim;
}

template <typename T>
__device__ void decode(T* __restrict__ out, float* __restrict__ part_acc,
                       float* __restrict__ part_ml, const T* __restrict__ q,
                       const T* __restrict__ key_cache, const T* __restrict__ value_cache,
                       const uint32_t* __restrict__ seqs, const uint32_t* __restrict__ tables,
                       int heads, int kv_heads, int head_dim, int block_size, int max_blocks,
                       float scale, int partition_size, int max_parts) {
  __shared__ float sm_m[kWarps], sm_l[kWarps], sm_acc[kWarps][kMaxDimsPerLane * 32];
  const int h = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = seqs[seq * 3 + 0];
  const int ctx = seqs[seq * 3 + 2];
  const int start = partition_size > 0 ? part * partition_size : 0;
  const int end = partition_size > 0 ? min(ctx, start + partition_size) : ctx;
  const int g = h / (heads / kv_heads);
  const uint32_t* table = tables + (int64_t)seq * max_blocks;

  float qv[kMaxDimsPerLane], acc[kMaxDimsPerLane];
  const T* qrow = q + ((int64_t)row * heads + h) * head_dim;
#pragma unroll
  for (int k = 0; k < kMaxDimsPerLane; ++k) {
    const int d = lane + 32 * k;
    qv[k] = d < head_dim ? to_float(qrow[d]) * scale : 0.f;
    acc[k] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int p = start + warp; p < end; p += kWarps) {
    const int64_t off = kv_offset(table, p, block_size, kv_heads, g, head_dim);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < head_dim) s += qv[k] * to_float(key_cache[off + d]);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float alpha = __expf(m - m_new);
    const float w = __expf(s - m_new);
    l = l * alpha + w;
#pragma unroll
    for (int k = 0; k < kMaxDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < head_dim) acc[k] = acc[k] * alpha + w * to_float(value_cache[off + d]);
    }
    m = m_new;
  }

  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int k = 0; k < kMaxDimsPerLane; ++k) {
    const int d = lane + 32 * k;
    if (d < head_dim) sm_acc[warp][d] = acc[k];
  }
  __syncthreads();
  float big = -INFINITY;
  for (int w = 0; w < kWarps; ++w) big = fmaxf(big, sm_m[w]);
  float denom = 0.f;
  for (int w = 0; w < kWarps; ++w)
    if (sm_m[w] != -INFINITY) denom += sm_l[w] * __expf(sm_m[w] - big);
  const int64_t part_row = ((int64_t)seq * heads + h) * max_parts + part;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float a = 0.f;
    for (int w = 0; w < kWarps; ++w)
      if (sm_m[w] != -INFINITY) a += sm_acc[w][d] * __expf(sm_m[w] - big);
    if (partition_size > 0) {
      part_acc[part_row * head_dim + d] = a;
    } else {
      out[((int64_t)row * heads + h) * head_dim + d] = from_float<T>(a / denom);
    }
  }
  if (partition_size > 0 && threadIdx.x == 0) {
    part_ml[part_row * 2 + 0] = big;
    part_ml[part_row * 2 + 1] = denom;
  }
}

template <typename T>
__device__ void reduce(T* __restrict__ out, const float* __restrict__ part_acc,
                       const float* __restrict__ part_ml, const uint32_t* __restrict__ seqs,
                       int heads, int head_dim, int partition_size, int max_parts) {
  const int h = blockIdx.x, seq = blockIdx.y;
  const int row = seqs[seq * 3 + 0];
  const int ctx = seqs[seq * 3 + 2];
  const int parts = (ctx + partition_size - 1) / partition_size;
  const int64_t base = ((int64_t)seq * heads + h) * max_parts;
  float big = -INFINITY;
  for (int p = 0; p < parts; ++p) big = fmaxf(big, part_ml[(base + p) * 2]);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float num = 0.f, den = 0.f;
    for (int p = 0; p < parts; ++p) {
      const float mp = part_ml[(base + p) * 2];
      if (mp == -INFINITY) continue;
      const float e = __expf(mp - big);
      num += part_acc[(base + p) * head_dim + d] * e;
      den += part_ml[(base + p) * 2 + 1] * e;
    }
    out[((int64_t)row * heads + h) * head_dim + d] = from_float<T>(num / den);
  }
}

// KT keys per shared-memory tile; a warp's 32 lanes split as KT keys x (32 / KT) slices of
// head_dim, so every lane works on every score.
template <typename T, int KT>
__device__ void prefill(T* __restrict__ out, const T* __restrict__ q,
                        const T* __restrict__ key_cache, const T* __restrict__ value_cache,
                        const uint32_t* __restrict__ seqs, const uint32_t* __restrict__ tables,
                        const uint32_t* __restrict__ tiles, int heads, int kv_heads, int head_dim,
                        int block_size, int max_blocks, float scale) {
  extern __shared__ float smem[];
  constexpr int kSlices = 32 / KT;
  const int stride = head_dim + 1;  // padded rows: lanes reading different keys hit different banks
  float* sm_q = smem;
  float* sm_k = sm_q + kTileQ * head_dim;
  float* sm_v = sm_k + KT * stride;

  const int h = blockIdx.x, tile = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seq = tiles[tile * 2 + 0], r0 = tiles[tile * 2 + 1];
  const int qstart = seqs[seq * 3 + 0], qlen = seqs[seq * 3 + 1], ctx = seqs[seq * 3 + 2];
  const int rows = min(kTileQ, qlen - r0);
  const int base = ctx - qlen + r0;  // context position of the tile's first row
  const int last_pos = base + rows - 1;
  const int g = h / (heads / kv_heads);
  const uint32_t* table = tables + (int64_t)seq * max_blocks;

  for (int i = threadIdx.x; i < rows * head_dim; i += blockDim.x) {
    const int r = i / head_dim, d = i % head_dim;
    sm_q[i] = to_float(q[((int64_t)(qstart + r0 + r) * heads + h) * head_dim + d]) * scale;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kMaxDimsPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxDimsPerLane; ++k) acc[rr][k] = 0.f;
  }

  const int j = lane % KT, slice = lane / KT;
  for (int kt = 0; kt <= last_pos; kt += KT) {
    __syncthreads();  // the previous tile is consumed (first pass: q is loaded)
    for (int i = threadIdx.x; i < KT * head_dim; i += blockDim.x) {
      const int jj = i / head_dim, d = i % head_dim;
      const int p = kt + jj;
      float kx = 0.f, vx = 0.f;
      if (p <= last_pos) {
        const int64_t off = kv_offset(table, p, block_size, kv_heads, g, head_dim);
        kx = to_float(key_cache[off + d]);
        vx = to_float(value_cache[off + d]);
      }
      sm_k[jj * stride + d] = kx;
      sm_v[jj * stride + d] = vx;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp + rr * kWarps;
      if (r >= rows) continue;  // uniform across the warp
      const int pos = base + r;
      float s = 0.f;
      for (int d = slice; d < head_dim; d += kSlices) s += sm_q[r * head_dim + d] * sm_k[j * stride + d];
#pragma unroll
      for (int o = KT; o < 32; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      const bool valid = kt + j <= pos;
      s = valid ? s : -INFINITY;
      const float m_new = fmaxf(m[rr], warp_max(s));
      if (m_new == -INFINITY) continue;  // nothing visible yet (uniform across the warp)
      const float alpha = __expf(m[rr] - m_new);
      const float w = valid ? __expf(s - m_new) : 0.f;
      l[rr] = l[rr] * alpha + warp_sum(slice == 0 ? w : 0.f);
#pragma unroll
      for (int k = 0; k < kMaxDimsPerLane; ++k) acc[rr][k] *= alpha;
#pragma unroll
      for (int jj = 0; jj < KT; ++jj) {
        const float wj = __shfl_sync(0xffffffffu, w, jj);
#pragma unroll
        for (int k = 0; k < kMaxDimsPerLane; ++k) {
          const int d = lane + 32 * k;
          if (d < head_dim) acc[rr][k] += wj * sm_v[jj * stride + d];
        }
      }
      m[rr] = m_new;
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp + rr * kWarps;
    if (r >= rows) continue;
    T* orow = out + ((int64_t)(qstart + r0 + r) * heads + h) * head_dim;
#pragma unroll
    for (int k = 0; k < kMaxDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < head_dim) orow[d] = from_float<T>(acc[rr][k] / l[rr]);
    }
  }
}

}  // namespace flint

#define FLINT_PAGED(SUFFIX, T)                                                                  \
  extern "C" __global__ void paged_attention_decode_##SUFFIX(                                   \
      T* out, float* part_acc, float* part_ml, const T* q, const T* key_cache,                  \
      const T* value_cache, const uint32_t* seqs, const uint32_t* tables, int32_t heads,        \
      int32_t kv_heads, int32_t head_dim, int32_t block_size, int32_t max_blocks, float scale,  \
      int32_t partition_size, int32_t max_parts) {                                              \
    flint::decode<T>(out, part_acc, part_ml, q, key_cache, value_cache, seqs, tables, heads,    \
                     kv_heads, head_dim, block_size, max_blocks, scale, partition_size,         \
                     max_parts);                                                                \
  }                                                                                             \
  extern "C" __global__ void paged_attention_reduce_##SUFFIX(                                   \
      T* out, const float* part_acc, const float* part_ml, const uint32_t* seqs, int32_t heads, \
      int32_t head_dim, int32_t partition_size, int32_t max_parts) {                            \
    flint::reduce<T>(out, part_acc, part_ml, seqs, heads, head_dim, partition_size, max_parts); \
  }                                                                                             \
  extern "C" __global__ void paged_attention_prefill_##SUFFIX(                                  \
      T* out, const T* q, const T* key_cache, const T* value_cache, const uint32_t* seqs,       \
      const uint32_t* tables, const uint32_t* tiles, int32_t heads, int32_t kv_heads,           \
      int32_t head_dim, int32_t block_size, int32_t max_blocks, float scale) {                  \
    if (head_dim <= 128) {                                                                      \
      flint::prefill<T, 16>(out, q, key_cache, value_cache, seqs, tables, tiles, heads,         \
                            kv_heads, head_dim, block_size, max_blocks, scale);                 \
    } else {                                                                                    \
      flint::prefill<T, 8>(out, q, key_cache, value_cache, seqs, tables, tiles, heads,          \
                           kv_heads, head_dim, block_size, max_blocks, scale);                  \
    }                                                                                           \
  }

FLINT_PAGED(f32, float)
FLINT_PAGED(f16, __half)
FLINT_PAGED(bf16, __nv_bfloat16)
