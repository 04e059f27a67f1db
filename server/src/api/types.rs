//! OpenAI request and response bodies, as serde types (and OpenAPI schemas via utoipa).
//! Unknown request fields are accepted and ignored, as OpenAI's own SDKs expect.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::generation::SamplingFields;

/// `stop`: one string or a list.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Defines a request struct with the sampling fields shared by chat and completions
/// (OpenAI's plus vLLM's common extensions) after its own fields. Written out instead of
/// `#[serde(flatten)]`, which would lose the field path in error messages.
macro_rules! with_sampling_fields {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        pub struct $name {
            $($body)*
            pub max_tokens: Option<i64>,
            pub temperature: Option<f32>,
            pub top_p: Option<f32>,
            pub n: Option<i64>,
            #[serde(default, deserialize_with = "super::lean::stop")]
            pub stop: Option<StopField>,
            pub presence_penalty: Option<f32>,
            pub frequency_penalty: Option<f32>,
            /// Token id (as a string) → bias in [-100, 100].
            pub logit_bias: Option<HashMap<String, f32>>,
            pub seed: Option<i64>,
            pub user: Option<String>,
            pub top_k: Option<i64>,
            pub min_p: Option<f32>,
            pub repetition_penalty: Option<f32>,
            pub ignore_eos: Option<bool>,
            pub min_tokens: Option<i64>,
            pub stop_token_ids: Option<Vec<i64>>,
            /// vLLM's extension: name logprob tokens `token_id:N` instead of their text.
            #[serde(default)]
            pub return_tokens_as_token_ids: bool,
            /// vLLM's extension: requests with different salts never share prefix-cache
            /// blocks (nor learn from `cached_tokens` what another client sent).
            pub cache_salt: Option<String>,
        }

        impl $name {
            /// The shared sampling fields.
            pub fn sampling(&self) -> SamplingFields {
                SamplingFields {
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    n: self.n,
                    stop: self.stop.clone().map(StopField::into_vec),
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    logit_bias: self.logit_bias.clone(),
                    seed: self.seed,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    repetition_penalty: self.repetition_penalty,
                    ignore_eos: self.ignore_eos,
                    min_tokens: self.min_tokens,
                    stop_token_ids: self.stop_token_ids.clone(),
                }
            }
        }
    };
}

/// A chat message's `content`: a string or a list of parts (text parts are joined).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct RequestMessage {
    pub role: String,
    #[serde(default, deserialize_with = "super::lean::message_content")]
    pub content: Option<MessageContent>,
    pub name: Option<String>,
}

with_sampling_fields! {
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Newer name of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<i64>,
    /// Return logprobs of the output tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token (0–20), with `logprobs: true`.
    pub top_logprobs: Option<i64>,
}
}

/// `prompt`: a string, a list of strings, token ids, or a list of token-id lists.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

with_sampling_fields! {
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    #[serde(deserialize_with = "super::lean::prompt")]
    pub prompt: PromptField,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Alternatives per token (0–20); also turns logprobs on.
    pub logprobs: Option<i64>,
    /// Prepend the prompt to the output text.
    #[serde(default)]
    pub echo: bool,
}
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// One alternative in chat logprobs.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// Completions-format logprobs (parallel arrays).
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    #[schema(value_type = Vec<Object>)]
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ResponseMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ResponseMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    /// vLLM's extension: the stop string or token id that matched.
    /// `null`, the matched stop string, or the matched token id.
    #[schema(value_type = Option<serde_json::Value>)]
    pub stop_reason: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    #[schema(value_type = Option<serde_json::Value>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    pub usage: Option<Usage>,
    pub system_fingerprint: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    #[schema(value_type = Option<serde_json::Value>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<serde_json::Value>,
}

/// A completion, or (`object: "text_completion"` too) one streamed chunk of it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
    pub system_fingerprint: Option<String>,
}

/// A served model: the base model (`parent: null`, `root`: its directory) or a LoRA adapter
/// (`root`: the adapter's directory, `parent`: the base model's name), as in vLLM.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    pub max_model_len: usize,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// `POST /v1/load_lora_adapter` (vLLM's body; `lora_int_id` and other fields are ignored).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct LoadLoraAdapterRequest {
    /// The name clients will pass as `model`.
    pub lora_name: String,
    /// The PEFT adapter directory (adapter_config.json + adapter_model.safetensors), relative
    /// to `--lora-dir` or absolute inside it.
    pub lora_path: String,
    /// The base model to add it to (flint extension); may be left out when one model is served.
    #[serde(default)]
    pub model: Option<String>,
}

/// `POST /v1/unload_lora_adapter`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct UnloadLoraAdapterRequest {
    pub lora_name: String,
}
