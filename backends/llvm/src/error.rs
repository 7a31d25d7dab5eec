//! Errors of the LLVM backend.

use std::fmt;

/// What went wrong while compiling, linking or running a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The graph uses something this backend does not compile (an op, a dtype).
    Unsupported(String),
    /// LLVM rejected the module or a target could not be set up.
    Llvm(String),
    /// Writing files or running the system linker failed.
    Io(String),
    /// A generated model function returned an error code at run time.
    Run {
        /// The `REFORMC_ERR_*` code.
        code: i32,
        /// The model's error message.
        message: String,
    },
    /// Inputs or weights handed to the JIT do not fit the graph.
    Input(String),
    /// A bug in the backend.
    Internal(String),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Unsupported(m) => write!(f, "not supported by the LLVM backend: {m}"),
            BackendError::Llvm(m) => write!(f, "LLVM: {m}"),
            BackendError::Io(m) => f.write_str(m),
            BackendError::Run { code, message } => write!(f, "{message} (error code {code})"),
            BackendError::Input(m) => f.write_str(m),
            BackendError::Internal(m) => write!(f, "internal error in the LLVM backend: {m}"),
        }
    }
}

impl std::error::Error for BackendError {}

impl From<inkwell::builder::BuilderError> for BackendError {
    fn from(e: inkwell::builder::BuilderError) -> Self {
        BackendError::Internal(format!("IR builder: {e}"))
    }
}

/// Result type of the backend.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;
