//! The `flint` binary as users run it: `flint run` on the default model (skipped when it is
//! not installed, unless FLINT_REQUIRE_DEFAULT_MODEL=1) and `flint convert` on bad input.

use std::{path::PathBuf, process::Command};

fn flint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flint"))
}

fn default_model() -> Option<PathBuf> {
    let home = std::env::var_os("FLINT_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache").join("flint")
    });
    let dir = home.join("models").join("smollm2-135m-instruct");
    if dir.join("config.json").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("FLINT_REQUIRE_DEFAULT_MODEL").map_or(true, |v| v != "1"),
        "default model missing at {}",
        dir.display()
    );
    eprintln!("skipped: default model not installed");
    None
}

#[test]
fn run_chat_streams_the_greedy_answer() {
    if default_model().is_none() {
        return;
    }
    // Recorded from transformers on the same weights (tests/fixtures/smollm2/reference.json).
    let out = flint().args(["run", "--chat", "--max-tokens", "24", "What is 2+2?"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "The answer to this classic math problem is 4.\n");
}

#[test]
fn run_with_a_seed_repeats() {
    if default_model().is_none() {
        return;
    }
    let run = || {
        let args = ["run", "--temperature", "0.9", "--seed", "42", "--max-tokens", "12", "Once upon a time"];
        let out = flint().args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_eq!(run(), run());
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = flint().args(["run", "--model", "/no/such/dir", "hi"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/dir"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = flint().args(["run", "--temperature", "-1", "--model", "/no/such/dir", "hi"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn convert_refuses_a_corrupt_gguf_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("broken.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00\xff\xff").unwrap();
    let out_dir = dir.path().join("out");
    let out = flint().arg("convert").arg(&gguf).arg(&out_dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out_dir.exists(), "nothing is written for a bad file");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("broken.gguf")]);
}
