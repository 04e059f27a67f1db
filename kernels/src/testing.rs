//! Test inputs shared by the kernels' unit tests and the GPU parity tests (not part of the
//! kernels' API).

use candle_core::{Device, Tensor};

/// A CPU f32 tensor of deterministic pseudo-random values, uniform in `[lo, hi)`, so a failing
/// case reproduces from its seed.
pub fn lcg_tensor(seed: u64, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + ((x >> 33) as f32 / (1u64 << 31) as f32) * (hi - lo)
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches data")
}
