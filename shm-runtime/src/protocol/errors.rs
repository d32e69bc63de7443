//! Errors on the wire: the one-byte [`ErrorCode`] a client sees, and the [`Refusal`] (a code and
//! a sentence) with which the server refuses or ends a request.

use rkyv::{Archive, Deserialize, Serialize};

/// Error kinds on the wire.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::ErrorCode;
/// use shm_runtime::Error;
///
/// // One byte on the wire ...
/// assert_eq!(ErrorCode::TimedOut as u8, 4);
/// assert_eq!(ErrorCode::from_u8(4), Some(ErrorCode::TimedOut));
/// assert_eq!(ErrorCode::TimedOut.to_string(), "the deadline passed");
/// // ... that a client turns into its own error.
/// assert_eq!(Error::from_code(ErrorCode::TimedOut, String::new()), Error::TimedOut);
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum ErrorCode {
    /// The request is malformed or breaks a limit.
    InvalidRequest = 1,
    /// No model of that name (or it does not do that task).
    ModelNotFound = 2,
    /// The client has too many requests in flight, or a queue is full.
    Busy = 3,
    /// The deadline passed before the request finished.
    TimedOut = 4,
    /// The client cancelled it.
    Cancelled = 5,
    /// The model backend failed.
    Backend = 6,
    /// The server is shutting down.
    ShuttingDown = 7,
    /// The server could not get memory for the answer.
    ResourceExhausted = 8,
}

impl ErrorCode {
    /// From the inline code of a descriptor.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{Descriptor, DescriptorKind, ErrorCode};
    ///
    /// // An error answered inline carries its code in the descriptor's `len`.
    /// let d = Descriptor::new(DescriptorKind::InlineError, 0, ErrorCode::Busy as u32, 7);
    /// assert_eq!(ErrorCode::from_u8(d.len as u8), Some(ErrorCode::Busy));
    /// assert_eq!(ErrorCode::from_u8(0), None); // untrusted: unknown codes are refused
    /// ```
    pub fn from_u8(v: u8) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::InvalidRequest,
            2 => ErrorCode::ModelNotFound,
            3 => ErrorCode::Busy,
            4 => ErrorCode::TimedOut,
            5 => ErrorCode::Cancelled,
            6 => ErrorCode::Backend,
            7 => ErrorCode::ShuttingDown,
            8 => ErrorCode::ResourceExhausted,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::InvalidRequest => "the request is invalid",
            ErrorCode::ModelNotFound => "no such model, or it does not do that task",
            ErrorCode::Busy => "the service is busy",
            ErrorCode::TimedOut => "the deadline passed",
            ErrorCode::Cancelled => "the request was cancelled",
            ErrorCode::Backend => "the model failed",
            ErrorCode::ShuttingDown => "the server is shutting down",
            ErrorCode::ResourceExhausted => "the server has no memory for the answer",
        })
    }
}

/// Why the server refuses or ends a request: the code its client sees and a sentence that says
/// what was wrong. Validation returns these; the server answers them as error responses.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, check_request, ErrorCode, Input, Limits};
/// use shm_runtime::protocol::{Params, Request, Task};
///
/// let req = Request {
///     id: 1,
///     model: "".into(),
///     task: Task::Embed,
///     input: Input::Text("hi".into()),
///     params: Params::default(),
/// };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let refusal = check_request(access_request(&bytes)?, &Limits::default()).unwrap_err();
/// assert_eq!(refusal.code, ErrorCode::InvalidRequest);
/// assert_eq!(refusal.message, "model name must be 1..=64 bytes, got 0");
/// assert_eq!(refusal.to_string(), format!("the request is invalid: {}", refusal.message));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error kind on the wire.
    pub code: ErrorCode,
    /// What was wrong, for the client's error message.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{ErrorCode, Refusal};
    /// use shm_runtime::Error;
    ///
    /// let refusal = Refusal::new(ErrorCode::ModelNotFound, "no model named \"gpt\"");
    /// let sentence = "no such model, or it does not do that task: no model named \"gpt\"";
    /// assert_eq!(refusal.to_string(), sentence);
    /// // What the client makes of it.
    /// let e = Error::from_code(refusal.code, refusal.message);
    /// assert_eq!(e, Error::ModelNotFound("no model named \"gpt\"".into()));
    /// ```
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// An [`ErrorCode::InvalidRequest`] refusal.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{ErrorCode, Refusal};
    ///
    /// /// A check of a server's own, beside the protocol's limits.
    /// fn check_prompt(prompt: &str) -> Result<(), Refusal> {
    ///     if prompt.trim().is_empty() {
    ///         return Err(Refusal::invalid("the prompt is blank"));
    ///     }
    ///     Ok(())
    /// }
    /// assert_eq!(check_prompt("  ").unwrap_err().code, ErrorCode::InvalidRequest);
    /// ```
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::InvalidRequest, message)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Refusal {}

impl ArchivedErrorCode {
    /// The native code.
    pub fn to_native(&self) -> ErrorCode {
        match self {
            ArchivedErrorCode::InvalidRequest => ErrorCode::InvalidRequest,
            ArchivedErrorCode::ModelNotFound => ErrorCode::ModelNotFound,
            ArchivedErrorCode::Busy => ErrorCode::Busy,
            ArchivedErrorCode::TimedOut => ErrorCode::TimedOut,
            ArchivedErrorCode::Cancelled => ErrorCode::Cancelled,
            ArchivedErrorCode::Backend => ErrorCode::Backend,
            ArchivedErrorCode::ShuttingDown => ErrorCode::ShuttingDown,
            ArchivedErrorCode::ResourceExhausted => ErrorCode::ResourceExhausted,
        }
    }
}
