//! CLI errors: a one-line message and an exit code.

use std::fmt;

/// A failure the CLI reports as `error: <message>` before exiting.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    /// 2 for bad input (files, flags, shapes), 1 for internal failures.
    pub code: i32,
}

impl CliError {
    /// Bad input: the user can fix it.
    pub fn input(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 2,
        }
    }

    /// A failure inside reformc (a bug, or an I/O error writing results).
    pub fn internal(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<reformc_frontend::error::FrontendError> for CliError {
    fn from(e: reformc_frontend::error::FrontendError) -> CliError {
        CliError::input(e.to_string())
    }
}

/// Result type of CLI commands.
pub type CliResult<T> = Result<T, CliError>;
