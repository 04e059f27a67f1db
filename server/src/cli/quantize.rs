//! `flint quantize <in> <out.gguf> --type T`: writes a llama GGUF file that llama.cpp and
//! flint load, from a GGUF file or a Hugging Face llama directory ([`QuantizeArgs`]).

use std::path::PathBuf;

use clap::Args;
use flint_engine::models::gguf::{self, QuantType, QuantizeOptions};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A llama GGUF file (any type candle can dequantize) or a Hugging Face llama directory
    /// (config.json, model.safetensors[.index.json], tokenizer.json, tokenizer_config.json).
    pub input: PathBuf,
    /// The GGUF file to write (replaced atomically when complete).
    pub out: PathBuf,
    /// Type of the matrices: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k
    /// (q4_k_m, q4_k_s), q5_k (q5_k_m, q5_k_s), q6_k. Norms stay f32.
    #[arg(long = "type", value_name = "TYPE")]
    pub qtype: QuantType,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn main(args: QuantizeArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let opts = QuantizeOptions {
        qtype: args.qtype,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    let report = gguf::quantize(&args.input, &args.out, &opts)?;
    eprintln!(
        "quantized {} tensors to {} into {} ({:.1} MB; {})",
        report.tensors,
        args.qtype,
        report.out.display(),
        report.bytes_written as f64 / 1e6,
        report.type_counts()
    );
    Ok(())
}
