//! Launches of `kernels/cuda/fused.cu`.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::backend::BackendStorage;
use candle_core::{Layout, Result, Shape};

use super::{suffix, view, view_mut, with_float, Kernel, FUSED_MODULE};

/// `add_rms_norm`: returns `[2, ..x]` = (normed, sum).
pub(crate) fn add_rms_norm(
    eps: f32,
    x: &CudaStorage,
    x_l: &Layout,
    r: &CudaStorage,
    r_l: &Layout,
    w: &CudaStorage,
    w_l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device.clone();
    let hidden = *x_l.dims().last().expect("add_rms_norm checked the rank");
    let n = x_l.shape().elem_count();
    let rows = n / hidden.max(1);
    let kernel = Kernel::load(&dev, FUSED_MODULE, &format!("rms_norm_{}", suffix(x.dtype())?))?;
    let threads = if hidden >= 4096 { 1024 } else if hidden >= 1024 { 512 } else { 256 };
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let hidden_i = hidden as i32;
    let mut dims = vec![2];
    dims.extend_from_slice(x_l.dims());
    with_float!(x.dtype(), T => {
        let (xv, rv, wv) = (view::<T>(x, x_l, "x")?, view::<T>(r, r_l, "residual")?, view::<T>(w, w_l, "weight")?);
        // SAFETY: the kernel writes both halves in full.
        let mut out = unsafe { dev.alloc::<T>((2 * n).max(1)) }?;
        if rows > 0 {
            let (mut normed, mut sum) = out.split_at_mut(n);
            let mut b = kernel.builder();
            b.arg(&xv).arg(&rv).arg(&wv).arg(&mut normed).arg(&mut sum).arg(&hidden_i).arg(&eps);
            // SAFETY: arguments match `rms_norm_*` in fused.cu.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(dims)))
    })
}

/// `rotary_inplace` on `x` `[tokens, heads, head_dim]`.
pub(crate) fn rotary(
    x: &mut CudaStorage,
    x_l: &Layout,
    cos: &CudaStorage,
    cos_l: &Layout,
    sin: &CudaStorage,
    sin_l: &Layout,
) -> Result<()> {
    let dev = x.device.clone();
    let (tokens, heads, head_dim) = x_l.shape().dims3()?;
    if tokens == 0 {
        return Ok(());
    }
    let kernel = Kernel::load(&dev, FUSED_MODULE, &format!("rotary_{}", suffix(x.dtype())?))?;
    let threads = ((heads * head_dim / 2).div_ceil(32) * 32).clamp(32, 512) as u32;
    let cfg = LaunchConfig { grid_dim: (tokens as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let (heads_i, head_dim_i) = (heads as i32, head_dim as i32);
    with_float!(x.dtype(), T => {
        let (cv, sv) = (view::<T>(cos, cos_l, "cos")?, view::<T>(sin, sin_l, "sin")?);
        let mut xv = view_mut::<T>(x, x_l, "x")?;
        let mut b = kernel.builder();
        b.arg(&mut xv).arg(&cv).arg(&sv).arg(&heads_i).arg(&head_dim_i);
        // SAFETY: arguments match `rotary_*` in fused.cu.
        unsafe { b.launch(cfg) }.w()?;
    });
    Ok(())
}

/// `silu_and_mul`: `silu(gate) * up`.
pub(crate) fn silu_and_mul(
    g: &CudaStorage,
    g_l: &Layout,
    u: &CudaStorage,
    u_l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = g.device.clone();
    let n = g_l.shape().elem_count();
    let kernel = Kernel::load(&dev, FUSED_MODULE, &format!("silu_and_mul_{}", suffix(g.dtype())?))?;
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let n_i = n as i64;
    with_float!(g.dtype(), T => {
        let (gv, uv) = (view::<T>(g, g_l, "gate")?, view::<T>(u, u_l, "up")?);
        // SAFETY: the grid-stride loop writes every element.
        let mut out = unsafe { dev.alloc::<T>(n.max(1)) }?;
        let mut b = kernel.builder();
        b.arg(&gv).arg(&uv).arg(&mut out).arg(&n_i);
        // SAFETY: arguments match `silu_and_mul_*` in fused.cu.
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), g_l.shape().clone()))
    })
}

/// `silu_and_mul_packed`: `x` `[.., 2 * inter]` = `[gate | up]` → `out_shape` `[.., inter]`.
pub(crate) fn silu_and_mul_packed(x: &CudaStorage, x_l: &Layout, out_shape: Shape) -> Result<(CudaStorage, Shape)> {
    let dev = x.device.clone();
    let n = out_shape.elem_count();
    let inter = out_shape.dims().last().copied().unwrap_or(0);
    let rows = n.checked_div(inter).unwrap_or(0);
    let kernel = Kernel::load(&dev, FUSED_MODULE, &format!("silu_and_mul_packed_{}", suffix(x.dtype())?))?;
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (rows_i, inter_i) = (rows as i64, inter as i64);
    with_float!(x.dtype(), T => {
        let xv = view::<T>(x, x_l, "x")?;
        // SAFETY: the grid-stride loop writes every element.
        let mut out = unsafe { dev.alloc::<T>(n.max(1)) }?;
        if n > 0 {
            let mut b = kernel.builder();
            b.arg(&xv).arg(&mut out).arg(&rows_i).arg(&inter_i);
            // SAFETY: arguments match `silu_and_mul_packed_*` in fused.cu.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), out_shape))
    })
}
