//! The OpenAI API's request and answer bodies, as far as the gateway serves them. Unknown request
//! fields are ignored (serde's default), as the API's other servers do.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A string or a list of strings (`stop`, `input`, `prompt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// The sampling fields shared by chat and completions. Absent values take the OpenAI API's
/// defaults (temperature 1, top_p 1), not the runtime's.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Sampling {
    pub(crate) max_tokens: Option<u32>,
    pub(crate) max_completion_tokens: Option<u32>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) stop: Option<OneOrMany>,
    pub(crate) seed: Option<i64>,
    pub(crate) n: Option<u32>,
    pub(crate) presence_penalty: Option<f32>,
    pub(crate) frequency_penalty: Option<f32>,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    /// Extensions that llama.cpp's server and others accept too.
    pub(crate) top_k: Option<u32>,
    pub(crate) min_p: Option<f32>,
    pub(crate) repetition_penalty: Option<f32>,
}

impl Sampling {
    /// Whether a stream ends with the usage chunk (`stream_options.include_usage`).
    pub(crate) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// The content of a chat message: a string, or a list of parts of which the text ones count.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) text: Option<String>,
}

/// A chat message.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatMessage {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
    #[serde(default)]
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: Option<u8>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) model: String,
    pub(crate) prompt: OneOrMany,
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
    /// The number of most likely tokens to return with each token (the legacy API's form).
    pub(crate) logprobs: Option<u8>,
    #[serde(default)]
    pub(crate) echo: bool,
    pub(crate) suffix: Option<String>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct EmbeddingRequest {
    pub(crate) model: String,
    pub(crate) input: Value,
    pub(crate) encoding_format: Option<String>,
    pub(crate) dimensions: Option<u32>,
}

/// `POST /v1/classify`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ClassifyRequest {
    pub(crate) model: String,
    pub(crate) input: OneOrMany,
}

/// Token counts, as the API reports them.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
    pub(crate) total_tokens: u32,
}

impl From<shm_runtime::Usage> for Usage {
    fn from(u: shm_runtime::Usage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// The API's name of a finish reason (`stop` or `length`; a cancelled or timed-out generation
/// never reaches a client as a success).
pub(crate) fn finish_reason(f: shm_runtime::FinishReason) -> &'static str {
    match f {
        shm_runtime::FinishReason::Length => "length",
        _ => "stop",
    }
}

/// One token's log-probabilities, in the chat API's form.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChatLogprob {
    pub(crate) token: String,
    pub(crate) logprob: f32,
    pub(crate) bytes: Vec<u8>,
    pub(crate) top_logprobs: Vec<TopChatLogprob>,
}

/// One alternative of a [`ChatLogprob`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TopChatLogprob {
    pub(crate) token: String,
    pub(crate) logprob: f32,
    pub(crate) bytes: Vec<u8>,
}

/// The chat API's `logprobs` object.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChatLogprobs {
    pub(crate) content: Vec<ChatLogprob>,
}

/// The runtime's log-probabilities in the chat API's form.
pub(crate) fn chat_logprobs(logprobs: &[shm_runtime::TokenLogprob]) -> ChatLogprobs {
    let content = logprobs
        .iter()
        .map(|lp| {
            let token = lp.text.clone();
            ChatLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: lp.logprob,
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|t| TopChatLogprob {
                        token: t.text.clone(),
                        logprob: t.logprob,
                        bytes: t.text.as_bytes().to_vec(),
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}
