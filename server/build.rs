//! With the `cuda` feature, bakes into the `flint` binary a run path (DT_RUNPATH) to the usual
//! places where PyTorch's CUDA 13 wheels put their libraries (`site-packages/nvidia/cu13/lib`:
//! libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13) on the
//! GPU machines, so the binary starts there without extra setup. libcuda.so.1 comes from the
//! driver through the normal loader paths.
//!
//! If the wheels live elsewhere, LD_LIBRARY_PATH (searched before a RUNPATH) still works:
//!   export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')/lib
//! Extra directories can be added at build time with FLINT_CUDA_RPATH (colon-separated).
//! Without the feature this does nothing.

const PYTHON_MINORS: std::ops::RangeInclusive<u32> = 10..=14;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=FLINT_CUDA_RPATH");

    let mut dirs: Vec<String> = std::env::var("FLINT_CUDA_RPATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    for minor in PYTHON_MINORS {
        // pip as root on Debian/Ubuntu, pip on python.org / docker `python:` images, then conda.
        dirs.push(format!(
            "/usr/local/lib/python3.{minor}/dist-packages/nvidia/cu13/lib"
        ));
        dirs.push(format!(
            "/usr/local/lib/python3.{minor}/site-packages/nvidia/cu13/lib"
        ));
        dirs.push(format!(
            "/opt/conda/lib/python3.{minor}/site-packages/nvidia/cu13/lib"
        ));
    }
    dirs.push("/usr/lib/python3/dist-packages/nvidia/cu13/lib".to_owned());

    // Missing directories are harmless: the loader skips them.
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", dirs.join(":"));
}
