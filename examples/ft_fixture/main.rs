//! Trains the adapters of tests/fixtures/ft/ with flint's own fine-tuning (the fixed recipe
//! in recipe.rs) and saves them as PEFT directories:
//!
//!     cargo run --release --example ft_fixture [-- FIXTURES_DIR]
//!
//! For every tiny fixture model <arch> in recipe::ARCHS it replaces tests/fixtures/ft/<arch>/
//! with adapter/ (TrainableModel::save_peft) and train.json (the recipe and its losses).
//! scripts/make_ft_fixtures.py runs this, then adds peft's reference logits; the round trip is
//! checked by tests/ft_peft_roundtrip.rs. Deterministic: rerunning on the same machine writes
//! the same bytes.

mod recipe;

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let fixtures = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures"),
    };
    for arch in recipe::ARCHS {
        let out = recipe::ft_dir(&fixtures, arch);
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        std::fs::create_dir_all(&out)?;
        let (trained, losses) = recipe::train(&fixtures, arch)?;
        trained.model.save_peft(&out.join("adapter"), &recipe::base_model_name(arch))?;
        let text = serde_json::to_string_pretty(&recipe::describe(arch, &losses))?;
        std::fs::write(out.join("train.json"), text + "\n")?;

        let mut max_b = 0f32;
        for (name, t) in trained.model.adapter_tensors()? {
            if name.contains(".lora_B.") {
                max_b = max_b.max(t.abs()?.flatten_all()?.max(0)?.to_scalar()?);
            }
        }
        println!("ft/{arch}: {} steps, losses {losses:?}, max |B| {max_b:.4}", trained.steps);
    }
    Ok(())
}
