//! The archived request: what the model is asked to do ([`Task`]), its [`Input`] (text, token
//! ids, a chat, tensors or several texts) and the [`Request`] that carries them with its
//! [`Params`].

use rkyv::{Archive, Deserialize, Serialize};

use super::{Params, Tensor};

/// What the model is asked to do.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{ArchivedTask, Task};
///
/// // A task named in a configuration file.
/// let task = [Task::Classify, Task::Embed, Task::Generate, Task::Tensors]
///     .into_iter()
///     .find(|t| t.name() == "embed");
/// assert_eq!(task, Some(Task::Embed));
/// // Archived in a request, it reads back as itself.
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&Task::Embed)?;
/// let archived = rkyv::access::<ArchivedTask, rkyv::rancor::Error>(&bytes)?;
/// assert_eq!(archived.to_native(), Task::Embed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum Task {
    /// Text in, label scores out.
    Classify,
    /// Text (or tokens) in, one vector out.
    Embed,
    /// Prompt in, generated text out (optionally streamed).
    Generate,
    /// Named tensors in, named tensors out.
    Tensors,
}

impl Task {
    /// The task's name, as in configuration files: `classify`, `embed`, `generate`, `tensors`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::Task;
    ///
    /// assert_eq!(Task::Generate.name(), "generate");
    /// assert_eq!(Task::Tensors.to_string(), "tensors"); // Display writes the name
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Embed => "embed",
            Task::Generate => "generate",
            Task::Tensors => "tensors",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ArchivedTask {
    /// The native task.
    pub fn to_native(self) -> Task {
        match self {
            ArchivedTask::Classify => Task::Classify,
            ArchivedTask::Embed => Task::Embed,
            ArchivedTask::Generate => Task::Generate,
            ArchivedTask::Tensors => Task::Tensors,
        }
    }
}

/// One chat message.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, ArchivedInput, ChatMessage, Input, Params, Request};
/// use shm_runtime::protocol::Task;
///
/// let chat = vec![
///     ChatMessage { role: "system".into(), content: "Answer briefly.".into() },
///     ChatMessage { role: "user".into(), content: "What is rkyv?".into() },
/// ];
/// let req = Request {
///     id: 1,
///     model: "smollm2".into(),
///     task: Task::Generate,
///     input: Input::Chat(chat),
///     params: Params::default(),
/// };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let ArchivedInput::Chat(messages) = &access_request(&bytes)?.input else {
///     panic!("not a chat")
/// };
/// assert_eq!(messages[1].role, "user");
/// assert_eq!(messages[1].content, "What is rkyv?");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

/// The input of a request.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, check_request, ArchivedInput, Input, Limits};
/// use shm_runtime::protocol::{Params, Request, Task};
///
/// // Two texts embedded in one request, one row each in the answer.
/// let input = Input::Texts(vec!["a cat".into(), "a dog".into()]);
/// let params = Params::default();
/// let req = Request { id: 1, model: "minilm".into(), task: Task::Embed, input, params };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let archived = access_request(&bytes)?;
/// check_request(archived, &Limits::default())?;
/// match &archived.input {
///     ArchivedInput::Texts(texts) => assert_eq!(texts[1], "a dog"),
///     other => panic!("unexpected input {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Input {
    /// Plain text (tokenized by the server).
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A conversation (formatted with the model's chat template).
    Chat(Vec<ChatMessage>),
    /// Named tensors.
    Tensors(Vec<Tensor>),
    /// Several texts answered together in one answer (embed, classify): one row each, in order.
    Texts(Vec<String>),
}

/// An inference request.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, Input, Params, Request, Task};
///
/// let req = Request {
///     id: 42,
///     model: "smollm2".into(),
///     task: Task::Generate,
///     input: Input::Text("Once upon a time".into()),
///     params: Params { max_tokens: 16, ..Params::default() },
/// };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let archived = access_request(&bytes)?; // validated, then read in place
/// assert_eq!(archived.id, 42);
/// assert_eq!(archived.params.max_tokens, 16);
/// assert_eq!(rkyv::deserialize::<Request, rkyv::rancor::Error>(archived)?, req);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Request {
    /// Chosen by the client; echoed in every response to it.
    pub id: u64,
    /// Model name, as the server loaded it.
    pub model: String,
    /// What to do.
    pub task: Task,
    /// The input.
    pub input: Input,
    /// Parameters.
    pub params: Params,
}
