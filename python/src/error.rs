//! Errors of the bindings: a one-line message, as the CLI prints it after
//! `error: `, and whether the caller's input was at fault.

use std::fmt;

/// A failure `reformc.ReformcError` reports.
#[derive(Debug)]
pub struct Error {
    /// The message, one line.
    pub message: String,
    /// True for bad input (files, arrays, options); false for a failure
    /// inside reformc. The CLI's exit codes 2 and 1.
    pub is_input: bool,
}

impl Error {
    /// Bad input: the user can fix it.
    pub fn input(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            is_input: true,
        }
    }

    /// A failure inside reformc (a bug, or an engine refusing the graph).
    pub fn internal(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            is_input: false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<reformc_frontend::error::FrontendError> for Error {
    fn from(e: reformc_frontend::error::FrontendError) -> Error {
        Error::input(e.to_string())
    }
}

/// Result type of the bindings.
pub type Result<T> = std::result::Result<T, Error>;
