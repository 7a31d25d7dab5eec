//! Text taken from users' files, made safe to print.

/// `s` with control characters escaped (`\n`, `\u{1b}`), so that text taken
/// from a user's file or argument keeps an error message on one line.
///
/// ```
/// assert_eq!(reformc_tensor::shown("a\nb"), "a\\nb");
/// ```
pub fn shown(s: &str) -> String {
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_debug().to_string(),
            false => c.to_string(),
        })
        .collect()
}
