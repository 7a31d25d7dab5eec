//! Progress on a terminal: one status line on stderr, rewritten in place for
//! each phase of long work and cleared at the end. Nothing is printed when
//! stderr is not a terminal (pipes, files, CI logs) or with `-q`.

use std::io::{IsTerminal, Write};

/// A status line for the phases of one command.
pub struct Progress {
    on: bool,
}

impl Progress {
    /// A status line shown only when stderr is a terminal, `TERM` is not
    /// `dumb`, and the command is not `quiet`.
    pub fn new(quiet: bool) -> Self {
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Progress {
            on: !quiet && !dumb && std::io::stderr().is_terminal(),
        }
    }

    /// Replaces the status line with `what` (e.g. "reformc: JIT compiling").
    pub fn phase(&self, what: &str) {
        if self.on {
            let mut e = std::io::stderr().lock();
            // Carriage return and "erase line": the next phase overwrites this one.
            let _ = write!(e, "\r\x1b[2K{what}...");
            let _ = e.flush();
        }
    }

    /// Erases the status line, so that what follows starts on a clean line.
    pub fn clear(&self) {
        if self.on {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
