//! CUDA side of the kernels (feature `cuda`): the PTX that `kernels/build.rs` compiles from
//! `kernels/cuda/*.cu`, to be loaded through candle's CUDA device
//! (`CudaDevice::get_or_load_custom_func(fn_name, module_name, ptx)`).

/// One `pub const <FILE_STEM>: &str` of PTX per `kernels/cuda/<file_stem>.cu`, and
/// `ALL: &[(module name, PTX)]`.
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// Module name under which `ptx::RESHAPE_AND_CACHE` is loaded.
pub const RESHAPE_AND_CACHE_MODULE: &str = "reshape_and_cache";

#[cfg(test)]
mod tests {
    use super::ptx;

    #[test]
    fn reshape_and_cache_ptx_is_embedded() {
        for dtype in ["f32", "f16", "bf16"] {
            for suffix in ["", "_u32"] {
                let entry = format!(".entry reshape_and_cache_{dtype}{suffix}(");
                assert!(ptx::RESHAPE_AND_CACHE.contains(&entry), "missing {entry}");
            }
        }
        assert!(ptx::ALL
            .iter()
            .any(|(name, _)| *name == super::RESHAPE_AND_CACHE_MODULE));
    }
}
