//! Building blocks shared by the architectures: rotary embedding, attention over the paged
//! cache, the gated MLP, RMSNorm, and the Llama-family decoder they make up.

pub mod attention;
pub mod decoder;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod qlinear;
pub mod rope;
pub mod weights;
