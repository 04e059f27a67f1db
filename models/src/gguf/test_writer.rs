//! A tiny GGUF writer for tests, and a synthetic llama model built with it (also behind
//! [`super::testing`] for other crates' tests, so parts are unused in a normal build).

#![allow(dead_code)]

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

#[derive(Clone, Debug)]
pub(crate) enum Meta {
    U32(u32),
    U64(u64),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
    F32Arr(Vec<f32>),
}

pub(crate) struct RawTensor {
    pub name: String,
    /// GGUF order (innermost first).
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

pub(crate) struct GgufBuilder {
    pub version: u32,
    pub alignment: u64,
    pub meta: Vec<(String, Meta)>,
    pub tensors: Vec<RawTensor>,
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGML type id of a candle dtype (the inverse of the reader's table).
pub(crate) fn type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self {
            version: 3,
            alignment: 32,
            meta: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn meta(&mut self, key: &str, value: Meta) -> &mut Self {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.to_string(), value));
        self
    }

    pub fn remove_tensor(&mut self, name: &str) {
        self.tensors.retain(|t| t.name != name);
    }

    /// Adds a tensor given in HF shape, stored as `dtype` (quantized with candle).
    /// Returns the values a reader gets back (the dequantized ones for lossy types).
    pub fn tensor(&mut self, name: &str, t: &Tensor, dtype: GgmlDType) -> Tensor {
        let q = QTensor::quantize(t, dtype).expect("quantize");
        let data = q.data().expect("qtensor data").into_owned();
        let dims = t.dims().iter().rev().map(|&d| d as u64).collect();
        self.tensors.push(RawTensor {
            name: name.to_string(),
            dims,
            type_id: type_id(dtype),
            data,
        });
        q.dequantize(&Device::Cpu).expect("dequantize")
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.meta.len() as u64).to_le_bytes());
        for (k, v) in &self.meta {
            put_str(&mut out, k);
            let (ty, body): (u32, Vec<u8>) = match v {
                Meta::U32(x) => (4, x.to_le_bytes().to_vec()),
                Meta::U64(x) => (10, x.to_le_bytes().to_vec()),
                Meta::I32(x) => (5, x.to_le_bytes().to_vec()),
                Meta::F32(x) => (6, x.to_le_bytes().to_vec()),
                Meta::Bool(x) => (7, vec![*x as u8]),
                Meta::Str(s) => {
                    let mut b = Vec::new();
                    put_str(&mut b, s);
                    (8, b)
                }
                Meta::StrArr(a) => {
                    let mut b = 8u32.to_le_bytes().to_vec();
                    b.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    a.iter().for_each(|s| put_str(&mut b, s));
                    (9, b)
                }
                Meta::I32Arr(a) => {
                    let mut b = 5u32.to_le_bytes().to_vec();
                    b.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    a.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                    (9, b)
                }
                Meta::F32Arr(a) => {
                    let mut b = 6u32.to_le_bytes().to_vec();
                    b.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    a.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                    (9, b)
                }
            };
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&body);
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            t.dims
                .iter()
                .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = align(offset + t.data.len() as u64);
        }
        let data_start = align(out.len() as u64) as usize;
        out.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

/// Deterministic pseudo-random values in [-1, 1).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub(crate) fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed), shape, &Device::Cpu).expect("tensor")
}

/// llama.cpp's `permute` (convert_hf_to_gguf.py), applied to an HF q/k weight.
pub(crate) fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().expect("2d");
    w.reshape((n_head, 2, rows / n_head / 2, cols))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((rows, cols)))
        .expect("permute")
}

/// GPT-2's byte → printable character table.
pub(crate) fn byte_chars() -> Vec<char> {
    let mut n = 0u32;
    (0u32..256)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            if printable {
                char::from_u32(b).expect("a byte is a char")
            } else {
                n += 1;
                char::from_u32(255 + n).expect("below the surrogates")
            }
        })
        .collect()
}

pub(crate) const HIDDEN: usize = 64;
pub(crate) const N_HEAD: usize = 4;
pub(crate) const N_KV: usize = 2;
pub(crate) const HEAD_DIM: usize = 16;
pub(crate) const FFN: usize = 96;
pub(crate) const N_LAYER: usize = 2;

/// A byte-level BPE vocabulary: 3 control tokens, 256 byte characters, a few merges and one
/// user-defined token. Returns (tokens, types, merges).
pub(crate) fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    tokens.push("<tool>".into());
    types.push(4);
    (tokens, types, merges.map(String::from).to_vec())
}

/// The HF tensors of the synthetic model, as a reader should get them back.
pub(crate) struct Expected {
    pub tensors: Vec<(String, Tensor)>,
}

/// A 2-layer llama with F32 and Q8_0 tensors, tied embeddings, and the tiny vocab.
/// Layer 0 q/k are F32 (the un-permutation must be exact), layer 1 q/k are Q8_0.
pub(crate) fn tiny_llama() -> (GgufBuilder, Expected) {
    let (tokens, types, merges) = tiny_vocab();
    let vocab = tokens.len();
    let mut b = GgufBuilder::new();
    b.meta("general.architecture", Meta::Str("llama".into()))
        .meta("general.name", Meta::Str("tiny".into()))
        .meta("llama.block_count", Meta::U32(N_LAYER as u32))
        .meta("llama.context_length", Meta::U32(2048))
        .meta("llama.embedding_length", Meta::U32(HIDDEN as u32))
        .meta("llama.feed_forward_length", Meta::U32(FFN as u32))
        .meta("llama.attention.head_count", Meta::U32(N_HEAD as u32))
        .meta("llama.attention.head_count_kv", Meta::U32(N_KV as u32))
        .meta("llama.rope.freq_base", Meta::F32(100000.0))
        .meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5))
        .meta("llama.rope.dimension_count", Meta::U32(HEAD_DIM as u32))
        .meta("tokenizer.ggml.model", Meta::Str("gpt2".into()))
        .meta("tokenizer.ggml.pre", Meta::Str("smollm".into()))
        .meta("tokenizer.ggml.tokens", Meta::StrArr(tokens))
        .meta("tokenizer.ggml.token_type", Meta::I32Arr(types))
        .meta("tokenizer.ggml.merges", Meta::StrArr(merges))
        .meta("tokenizer.ggml.bos_token_id", Meta::U32(1))
        .meta("tokenizer.ggml.eos_token_id", Meta::U32(2))
        .meta("tokenizer.ggml.unknown_token_id", Meta::U32(0))
        .meta("tokenizer.ggml.padding_token_id", Meta::U32(2))
        .meta("tokenizer.ggml.add_bos_token", Meta::Bool(false))
        .meta(
            "tokenizer.chat_template",
            Meta::Str("{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
        );
    let mut exp = Vec::new();
    let mut seed = 1;
    let mut add = |b: &mut GgufBuilder,
                   gguf: &str,
                   hf: &str,
                   shape: &[usize],
                   dtype: GgmlDType,
                   perm: Option<usize>| {
        seed += 1;
        let hf_t = tensor(shape, seed);
        let stored = match perm {
            Some(h) => llama_cpp_permute(&hf_t, h),
            None => hf_t.clone(),
        };
        let back = b.tensor(gguf, &stored, dtype);
        let back = match perm {
            Some(h) => super::convert::unpermute(&back, h).expect("unpermute"),
            None => back,
        };
        // For exact types the permutation round trip must give back the HF tensor itself.
        let want = if dtype == GgmlDType::F32 { hf_t } else { back };
        exp.push((hf.to_string(), want));
    };
    add(
        &mut b,
        "token_embd.weight",
        "model.embed_tokens.weight",
        &[vocab, HIDDEN],
        GgmlDType::Q8_0,
        None,
    );
    add(
        &mut b,
        "output_norm.weight",
        "model.norm.weight",
        &[HIDDEN],
        GgmlDType::F32,
        None,
    );
    for l in 0..N_LAYER {
        let qt = if l == 0 {
            GgmlDType::F32
        } else {
            GgmlDType::Q8_0
        };
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        let h = |s: &str| format!("model.layers.{l}.{s}.weight");
        add(
            &mut b,
            &p("attn_norm"),
            &h("input_layernorm"),
            &[HIDDEN],
            GgmlDType::F32,
            None,
        );
        add(
            &mut b,
            &p("attn_q"),
            &h("self_attn.q_proj"),
            &[N_HEAD * HEAD_DIM, HIDDEN],
            qt,
            Some(N_HEAD),
        );
        add(
            &mut b,
            &p("attn_k"),
            &h("self_attn.k_proj"),
            &[N_KV * HEAD_DIM, HIDDEN],
            qt,
            Some(N_KV),
        );
        add(
            &mut b,
            &p("attn_v"),
            &h("self_attn.v_proj"),
            &[N_KV * HEAD_DIM, HIDDEN],
            GgmlDType::Q8_0,
            None,
        );
        add(
            &mut b,
            &p("attn_output"),
            &h("self_attn.o_proj"),
            &[HIDDEN, N_HEAD * HEAD_DIM],
            GgmlDType::Q8_0,
            None,
        );
        add(
            &mut b,
            &p("ffn_norm"),
            &h("post_attention_layernorm"),
            &[HIDDEN],
            GgmlDType::F32,
            None,
        );
        add(
            &mut b,
            &p("ffn_gate"),
            &h("mlp.gate_proj"),
            &[FFN, HIDDEN],
            GgmlDType::Q8_0,
            None,
        );
        add(
            &mut b,
            &p("ffn_up"),
            &h("mlp.up_proj"),
            &[FFN, HIDDEN],
            GgmlDType::F32,
            None,
        );
        add(
            &mut b,
            &p("ffn_down"),
            &h("mlp.down_proj"),
            &[HIDDEN, FFN],
            GgmlDType::Q8_0,
            None,
        );
    }
    (b, Expected { tensors: exp })
}
