// Fused elementwise kernels of the decoder layer. Every one computes in f32 and rounds where
// transformers rounds when it runs in T, so bf16/f16 results track the reference.
//
// rms_norm_{T}(x, residual, weight, out, sum_out, hidden, eps)
//   x, residual, out, sum_out [rows, hidden]; weight [hidden]; grid = rows, block = 256..1024
//   threads (a multiple of 32). With `residual` non-null: s = T(x + residual) is written to
//   sum_out and normalised; otherwise s = x (sum_out unused, may be null).
//   out = T(weight * T(s * rsqrt(mean(s^2) + eps))), as HF's LlamaRMSNorm.
//
// rotary_{T}(x, cos, sin, heads, head_dim)
//   In place on x [tokens, heads, head_dim] (contiguous); cos, sin [tokens, head_dim / 2].
//   HF "rotate half": (a, b) = (x[i], x[i + d/2]) -> (a cos - b sin, b cos + a sin).
//   grid = tokens, any 1-D block.
//
// silu_and_mul_{T}(gate, up, out, n)
//   out = T(T(silu(gate)) * up) elementwise over n elements; grid-stride loop, any launch.
//
// silu_and_mul_packed_{T}(x, out, rows, inter)
//   x [rows, 2 * inter] = [gate | up] per row (the fused gate-up projection); out [rows, inter]
//   = the same per-element formula as silu_and_mul. Grid-stride loop, any launch.

#include "common.cuh"

namespace flint {

template <typename T>
__device__ void rms_norm(const T* __restrict__ x, const T* __restrict__ residual,
                         const T* __restrict__ weight, T* __restrict__ out,
                         T* __restrict__ sum_out, int32_t hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * hidden;
  T* outr = out + row * hidden;
  float sq = 0.f;
  if (residual != nullptr) {
    const T* rr = residual + row * hidden;
    T* sr = sum_out + row * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
      const T s = from_float<T>(to_float(xr[i]) + to_float(rr[i]));
      sr[i] = s;
      const float f = to_float(s);
      sq += f * f;
    }
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
      const float f = to_float(xr[i]);
      sq += f * f;
    }
  }
  const float rstd = rsqrtf(block_sum(sq, scratch) / (float)hidden + eps);
  // Each thread re-reads exactly the elements it wrote above, so no barrier is needed.
  const T* src = residual != nullptr ? sum_out + row * hidden : xr;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float n = round_to<T>(to_float(src[i]) * rstd);
    outr[i] = from_float<T>(to_float(weight[i]) * n);
  }
}

template <typename T>
__device__ void rotary(T* __restrict__ x, const T* __restrict__ cos, const T* __restrict__ sin,
                       int32_t heads, int32_t head_dim) {
  const int64_t token = blockIdx.x;
  const int32_t half = head_dim / 2;
  T* xt = x + token * heads * head_dim;
  const T* ct = cos + token * half;
  const T* st = sin + token * half;
  for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
    const int32_t h = i / half, j = i % half;
    T* xh = xt + h * head_dim;
    const float a = to_float(xh[j]), b = to_float(xh[j + half]);
    const float c = to_float(ct[j]), s = to_float(st[j]);
    xh[j] = from_float<T>(a * c - b * s);
    xh[j + half] = from_float<T>(b * c + a * s);
  }
}

// One element of both SiLU-and-mul forms, so the packed one rounds exactly like the other.
template <typename T>
__device__ __forceinline__ T silu_mul_one(T gate, T up) {
  const float g = to_float(gate);
  const float act = round_to<T>(g / (1.f + __expf(-g)));
  return from_float<T>(act * to_float(up));
}

template <typename T>
__device__ void silu_and_mul(const T* __restrict__ gate, const T* __restrict__ up,
                             T* __restrict__ out, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    out[i] = silu_mul_one<T>(gate[i], up[i]);
  }
}

template <typename T>
__device__ void silu_and_mul_packed(const T* __restrict__ x, T* __restrict__ out, int64_t rows,
                                    int64_t inter) {
  const int64_t n = rows * inter;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / inter, j = i - r * inter;
    const T* xr = x + r * 2 * inter;
    out[i] = silu_mul_one<T>(xr[j], xr[inter + j]);
  }
}

}  // namespace flint

#define FLINT_FUSED(SUFFIX, T)                                                                  \
  extern "C" __global__ void rms_norm_##SUFFIX(const T* x, const T* residual, const T* weight,  \
                                               T* out, T* sum_out, int32_t hidden, float eps) { \
    flint::rms_norm<T>(x, residual, weight, out, sum_out, hidden, eps);                         \
  }                                                                                             \
  extern "C" __global__ void rotary_##SUFFIX(T* x, const T* cos, const T* sin, int32_t heads,   \
                                             int32_t head_dim) {                                \
    flint::rotary<T>(x, cos, sin, heads, head_dim);                                             \
  }                                                                                             \
  extern "C" __global__ void silu_and_mul_##SUFFIX(const T* gate, const T* up, T* out,          \
                                                   int64_t n) {                                 \
    flint::silu_and_mul<T>(gate, up, out, n);                                                   \
  }                                                                                             \
  extern "C" __global__ void silu_and_mul_packed_##SUFFIX(const T* x, T* out, int64_t rows,     \
                                                          int64_t inter) {                      \
    flint::silu_and_mul_packed<T>(x, out, rows, inter);                                         \
  }

FLINT_FUSED(f32, float)
FLINT_FUSED(f16, __half)
FLINT_FUSED(bf16, __nv_bfloat16)
