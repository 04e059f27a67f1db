//! CUDA side of the kernels (feature `cuda`): the PTX that `kernels/build.rs` compiles from
//! `kernels/cuda/*.cu`, loaded through candle's CUDA device, and the launch code behind each
//! custom op's `cuda_fwd` ([`paged`], [`fused`]).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchArgs};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result};

pub(crate) mod fused;
pub(crate) mod lora;
pub(crate) mod paged;
pub(crate) mod sampling;

/// One `pub const <FILE_STEM>: &str` of PTX per `kernels/cuda/<file_stem>.cu`, and
/// `ALL: &[(module name, PTX)]`.
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// Module name under which `ptx::RESHAPE_AND_CACHE` is loaded.
pub const RESHAPE_AND_CACHE_MODULE: &str = "reshape_and_cache";
/// Module name under which `ptx::PAGED_ATTENTION` is loaded.
pub const PAGED_ATTENTION_MODULE: &str = "paged_attention";
/// Module name under which `ptx::FUSED` is loaded.
pub const FUSED_MODULE: &str = "fused";
/// Module name under which `ptx::LORA` is loaded.
pub const LORA_MODULE: &str = "lora";
/// Module name under which `ptx::SAMPLING` is loaded.
pub const SAMPLING_MODULE: &str = "sampling";

/// A loaded entry point and the stream it launches on (the device's, so it orders with
/// candle's own kernels).
pub(crate) struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    /// Loads entry point `name` of `module` (one of [`ptx::ALL`]) on `dev`; modules load once.
    pub(crate) fn load(dev: &CudaDevice, module: &str, name: &str) -> Result<Self> {
        let (_, code) = ptx::ALL
            .iter()
            .find(|(m, _)| *m == module)
            .ok_or_else(|| candle_core::Error::msg(format!("no PTX module {module}")))?;
        let func = dev.get_or_load_custom_func(name, module, code)?.into_cuda_function();
        Ok(Self { func, stream: dev.cuda_stream() })
    }

    pub(crate) fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// The entry-point suffix of a storage dtype.
pub(crate) fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("CUDA kernels take f32/f16/bf16, not {other:?}"),
    })
}

/// The contiguous elements `layout` describes, or an error naming `what`.
pub(crate) fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg(format!("{what} must be contiguous")))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// Copies `v` to the device (one padding element when empty: zero-length copies are refused,
/// and the kernels never read past their counts).
pub(crate) fn upload<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr + Copy + Default + 'static>(
    dev: &CudaDevice,
    v: &[T],
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
    let pad = [T::default()];
    dev.clone_htod(if v.is_empty() { &pad[..] } else { v })
}

/// Mutable counterpart of [`view`].
pub(crate) fn view_mut<'a, T: CudaDType>(
    s: &'a mut CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaViewMut<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg(format!("{what} must be contiguous")))?;
    Ok(s.as_cuda_slice_mut::<T>()?.slice_mut(a..b))
}

/// Runs `$body` with `$t` bound to the Rust type of a float dtype (f32/f16/bf16).
macro_rules! with_float {
    ($dtype:expr, $t:ident => $body:block) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F16 => {
                type $t = half::f16;
                $body
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            other => candle_core::bail!("CUDA kernels take f32/f16/bf16, not {other:?}"),
        }
    };
}
pub(crate) use with_float;

#[cfg(test)]
mod tests {
    use super::ptx;

    #[test]
    fn every_entry_point_is_embedded() {
        let module = |name: &str| ptx::ALL.iter().find(|(m, _)| *m == name).expect(name).1;
        for dtype in ["f32", "f16", "bf16"] {
            for suffix in ["", "_u32"] {
                let entry = format!(".entry reshape_and_cache_{dtype}{suffix}(");
                assert!(module(super::RESHAPE_AND_CACHE_MODULE).contains(&entry), "missing {entry}");
            }
            for kernel in ["decode", "reduce", "prefill"] {
                let entry = format!(".entry paged_attention_{kernel}_{dtype}(");
                assert!(module(super::PAGED_ATTENTION_MODULE).contains(&entry), "missing {entry}");
            }
            for kernel in ["rms_norm", "rotary", "silu_and_mul", "silu_and_mul_packed"] {
                let entry = format!(".entry {kernel}_{dtype}(");
                assert!(module(super::FUSED_MODULE).contains(&entry), "missing {entry}");
            }
            for kernel in ["lora_shrink", "lora_expand"] {
                let entry = format!(".entry {kernel}_{dtype}(");
                assert!(module(super::LORA_MODULE).contains(&entry), "missing {entry}");
            }
        }
    }
}
