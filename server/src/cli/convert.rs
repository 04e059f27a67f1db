//! `flint convert <file.gguf> <out-dir> [--dtype f32|bf16|f16]`

use std::path::PathBuf;

use clap::Args;
use flint_engine::models::gguf::{self, ConvertOptions, OutDType};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The GGUF file to convert (llama architecture; any quantization candle can dequantize).
    pub gguf: PathBuf,
    /// Directory to create with config.json, tokenizer files and model.safetensors.
    pub out_dir: PathBuf,
    /// dtype of the written weights.
    #[arg(long, default_value = "f32")]
    pub dtype: OutDType,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn main(args: ConvertArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let opts = ConvertOptions { dtype: args.dtype, progress: !args.quiet && std::io::stderr().is_terminal(), keep_quantized: false };
    let report = gguf::convert(&args.gguf, &args.out_dir, &opts)?;
    eprintln!(
        "converted {} tensors ({}) into {} ({:.1} MB)",
        report.tensors,
        report.architecture,
        report.out_dir.display(),
        report.bytes_written as f64 / 1e6
    );
    Ok(())
}
