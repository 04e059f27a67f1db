//! `flint quantize` end to end: the built binary on the synthetic tiny llama GGUF.
//!
//! The binary belongs to flint-server, so Cargo gives this package no `CARGO_BIN_EXE_flint`:
//! it is `$FLINT_BIN`, or `flint` next to this test's `deps/` directory (what
//! `cargo test --workspace --all-targets`, and so `make test`, builds). When it is missing the
//! tests are skipped, unless FLINT_REQUIRE_DEFAULT_MODEL=1 (set by `make test`).

use std::path::PathBuf;
use std::process::Command;

fn flint_bin() -> Option<PathBuf> {
    let bin = match std::env::var_os("FLINT_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            let exe = std::env::current_exe().expect("test binary path");
            // target/<profile>/deps/quantize_cli-<hash> → target/<profile>/flint
            exe.parent()?
                .parent()?
                .join(format!("flint{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if bin.is_file() {
        let help = Command::new(&bin).arg("--help").output().expect("run flint --help");
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("quantize"),
            "{} has no `quantize` command: rebuild it",
            bin.display()
        );
        return Some(bin);
    }
    let required = std::env::var("FLINT_REQUIRE_DEFAULT_MODEL").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "the flint binary is missing at {}: cargo build --release -p flint-server",
        bin.display()
    );
    eprintln!(
        "skipped: no flint binary at {} (cargo build --release -p flint-server)",
        bin.display()
    );
    None
}

#[test]
fn quantizes_the_tiny_gguf_and_converts_the_result() {
    let Some(bin) = flint_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny.gguf");
    std::fs::write(&src, flint_models::gguf::testing::tiny_llama_gguf()).unwrap();
    for qtype in ["q8_0", "q4_0", "Q4_K_M"] {
        let out = dir.path().join(format!("tiny.{qtype}.gguf"));
        let run = Command::new(&bin)
            .arg("quantize")
            .arg(&src)
            .arg(&out)
            .args(["--type", qtype])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{qtype}: {stderr}");
        assert!(stderr.contains("quantized 20 tensors"), "{stderr}");
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..4], b"GGUF");
        // flint reads what it wrote.
        let hf = dir.path().join(format!("hf.{qtype}"));
        let conv = Command::new(&bin)
            .arg("convert")
            .arg(&out)
            .arg(&hf)
            .arg("--quiet")
            .output()
            .unwrap();
        assert!(conv.status.success(), "{}", String::from_utf8_lossy(&conv.stderr));
        assert!(hf.join("model.safetensors").is_file());
    }
}

#[test]
fn a_bad_type_fails_and_lists_the_accepted_types() {
    let Some(bin) = flint_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny.gguf");
    std::fs::write(&src, flint_models::gguf::testing::tiny_llama_gguf()).unwrap();
    let out = dir.path().join("out.gguf");
    let run = Command::new(&bin)
        .arg("quantize")
        .arg(&src)
        .arg(&out)
        .args(["--type", "q9_9"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("q9_9") && stderr.contains("q4_k_m") && stderr.contains("q8_0"),
        "{stderr}"
    );
    assert!(!out.exists());

    // A missing input fails, names the file and writes nothing.
    let missing = dir.path().join("missing.gguf");
    let run = Command::new(&bin)
        .arg("quantize")
        .arg(&missing)
        .arg(&out)
        .args(["--type", "q8_0"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("missing.gguf"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("tiny.gguf")]);
}
