//! IR filetests: each `tests/filetests/**/*.ir` holds a `// RUN:` line (the
//! arguments of `reformc`, the file itself appended), the input IR, and
//! FileCheck-style directives that the command's standard output must match:
//!
//! - `// CHECK: text`: a later line contains `text` (in order after the previous match);
//! - `// CHECK-NEXT: text`: the line right after the previous match contains `text`;
//! - `// CHECK-NOT: text`: no line between the previous match and the next one
//!   (or the end of the output) contains `text`.
//!
//! `REFORMC_BLESS=1 cargo test -p reformc --test integration filetests::` rewrites every file's
//! directives from the actual output (a `// CHECK:` for the first line, a
//! `// CHECK-NEXT:` for each later one), keeping the RUN line and the input;
//! a file with a `// NO-BLESS` line keeps its hand-written directives and is
//! checked as usual.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One directive: its kind, the text to find, and its 1-based line in the file.
#[derive(Debug, Clone, PartialEq)]
struct Directive {
    kind: Kind,
    pattern: String,
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Check,
    Next,
    Not,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Check => "CHECK",
            Kind::Next => "CHECK-NEXT",
            Kind::Not => "CHECK-NOT",
        }
    }
}

/// A parsed filetest: the RUN arguments and the directives.
struct FileTest {
    run: Vec<String>,
    directives: Vec<Directive>,
}

/// The directive on a line, if any (`// CHECK-NEXT:` is tried before `// CHECK:`).
fn directive(line: &str, number: usize) -> Option<Directive> {
    let rest = line.trim_start().strip_prefix("//")?.trim_start();
    [
        ("CHECK-NEXT:", Kind::Next),
        ("CHECK-NOT:", Kind::Not),
        ("CHECK:", Kind::Check),
    ]
    .into_iter()
    .find_map(|(tag, kind)| {
        rest.strip_prefix(tag).map(|p| Directive {
            kind,
            pattern: p.trim().to_string(),
            line: number,
        })
    })
}

fn parse_test(path: &Path, text: &str) -> Result<FileTest, String> {
    let run = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("// RUN:"))
        .ok_or_else(|| format!("{}: no `// RUN:` line", path.display()))?;
    let directives: Vec<Directive> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| directive(l, i + 1))
        .collect();
    if directives.iter().all(|d| d.kind == Kind::Not) {
        return Err(format!(
            "{}: no `// CHECK:` line (bless with REFORMC_BLESS=1)",
            path.display()
        ));
    }
    Ok(FileTest {
        run: run.split_whitespace().map(str::to_string).collect(),
        directives,
    })
}

/// A directive that did not match: its line and why.
#[derive(Debug, PartialEq)]
struct Mismatch {
    line: usize,
    message: String,
}

/// FileCheck matching of `directives` against `output`.
fn check(directives: &[Directive], output: &str) -> Result<(), Mismatch> {
    let lines: Vec<&str> = output.lines().collect();
    // `next`: the first output line not yet consumed by a positive match.
    let mut next = 0usize;
    let mut pending_not: Vec<&Directive> = Vec::new();
    for d in directives {
        let found = match d.kind {
            Kind::Not => {
                pending_not.push(d);
                continue;
            }
            Kind::Check => (next..lines.len()).find(|&i| lines[i].contains(&d.pattern)),
            Kind::Next => (next < lines.len() && lines[next].contains(&d.pattern)).then_some(next),
        };
        let Some(at) = found else {
            let place = match (d.kind, lines.get(next)) {
                (Kind::Next, Some(l)) => format!("output line {} is `{l}`", next + 1),
                _ => format!("searched from output line {}", next + 1),
            };
            return Err(Mismatch {
                line: d.line,
                message: format!("{}: `{}` not found; {place}", d.kind.name(), d.pattern),
            });
        };
        no_forbidden(&pending_not, &lines, next, at)?;
        pending_not.clear();
        next = at + 1;
    }
    no_forbidden(&pending_not, &lines, next, lines.len())
}

/// Fails when a CHECK-NOT pattern occurs on output lines `from..to`.
fn no_forbidden(
    nots: &[&Directive],
    lines: &[&str],
    from: usize,
    to: usize,
) -> Result<(), Mismatch> {
    for d in nots {
        if let Some(i) = (from..to).find(|&i| lines[i].contains(&d.pattern)) {
            return Err(Mismatch {
                line: d.line,
                message: format!(
                    "CHECK-NOT: `{}` found on output line {}: `{}`",
                    d.pattern,
                    i + 1,
                    lines[i]
                ),
            });
        }
    }
    Ok(())
}

/// The file with its directives replaced by ones that match `output` exactly.
fn blessed(text: &str, output: &str) -> String {
    let kept: Vec<&str> = text.lines().filter(|l| directive(l, 0).is_none()).collect();
    let mut out = kept.join("\n").trim_end().to_string();
    out.push('\n');
    for (i, l) in output.lines().enumerate() {
        let tag = if i == 0 { "CHECK" } else { "CHECK-NEXT" };
        out.push_str(&format!("// {tag}: {}\n", l.trim_end()).replace(": \n", ":\n"));
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.ir` file under `dir`, sorted so that runs and reports are stable.
fn ir_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "ir") {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// Runs one filetest; returns a failure report, or blesses when asked.
fn run_one(path: &Path, bless: bool) -> Result<(), String> {
    let shown = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let test = match parse_test(Path::new(&shown), &text) {
        Ok(t) => t,
        Err(e) if bless && e.contains("no `// CHECK:`") => FileTest {
            run: text
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("// RUN:"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            directives: vec![],
        },
        Err(e) => return Err(e),
    };
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(&test.run)
        .arg(path)
        .output()
        .map_err(|e| format!("{shown}: cannot run reformc: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{shown}: `reformc {}` failed ({}): {}",
            test.run.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if bless && !text.lines().any(|l| l.trim() == "// NO-BLESS") {
        std::fs::write(path, blessed(&text, &stdout)).map_err(|e| format!("{shown}: {e}"))?;
        return Ok(());
    }
    check(&test.directives, &stdout).map_err(|m| {
        format!(
            "{shown}:{}: {}\n--- output ---\n{stdout}",
            m.line, m.message
        )
    })
}

#[test]
fn filetests() {
    let bless = std::env::var_os("REFORMC_BLESS").is_some_and(|v| v != "0" && !v.is_empty());
    let files = ir_files(&root().join("tests/filetests"));
    assert!(!files.is_empty(), "no filetests under tests/filetests");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| run_one(f, bless).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} filetests failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[cfg(test)]
mod matcher {
    use super::*;

    fn directives(text: &str) -> Vec<Directive> {
        text.lines()
            .enumerate()
            .filter_map(|(i, l)| directive(l, i + 1))
            .collect()
    }

    const OUT: &str = "graph {\n  %0 = input\n  %1 = exp %0\n  output \"y\" = %1\n}\n";

    #[test]
    fn check_in_order_passes() {
        let d = directives("// CHECK: graph\n// CHECK: exp\n// CHECK-NEXT: output");
        assert_eq!(check(&d, OUT), Ok(()));
    }

    #[test]
    fn missing_check_fails_with_its_line() {
        let d = directives("// CHECK: graph\n// CHECK: tanh");
        let m = check(&d, OUT).unwrap_err();
        assert_eq!(m.line, 2);
        assert!(m.message.contains("`tanh` not found"), "{}", m.message);
    }

    #[test]
    fn check_out_of_order_fails() {
        let d = directives("// CHECK: exp\n// CHECK: input");
        assert_eq!(check(&d, OUT).unwrap_err().line, 2);
    }

    #[test]
    fn check_next_must_be_the_very_next_line() {
        let d = directives("// CHECK: graph\n// CHECK-NEXT: exp");
        let m = check(&d, OUT).unwrap_err();
        assert_eq!(m.line, 2);
        assert!(m.message.contains("output line 2 is"), "{}", m.message);
    }

    #[test]
    fn check_not_between_matches() {
        let ok = directives("// CHECK: graph\n// CHECK-NOT: tanh\n// CHECK: output");
        assert_eq!(check(&ok, OUT), Ok(()));
        let bad = directives("// CHECK: graph\n// CHECK-NOT: exp\n// CHECK: output");
        assert_eq!(check(&bad, OUT).unwrap_err().line, 2);
        // Only between the matches: `input` before the first CHECK is allowed.
        let before = directives("// CHECK: exp\n// CHECK-NOT: input\n// CHECK: output");
        assert_eq!(check(&before, OUT), Ok(()));
    }

    #[test]
    fn trailing_check_not_reaches_the_end() {
        let bad = directives("// CHECK: exp\n// CHECK-NOT: }");
        assert_eq!(check(&bad, OUT).unwrap_err().line, 2);
    }

    #[test]
    fn blessed_directives_match_their_output() {
        let input = "// RUN: opt\ngraph {\n}\n// CHECK: old\n// CHECK-NEXT: stale\n";
        let text = blessed(input, OUT);
        assert!(text.starts_with("// RUN: opt\ngraph {\n}\n// CHECK: graph {\n"));
        assert!(!text.contains("stale"));
        let d = parse_test(Path::new("t.ir"), &text).unwrap().directives;
        assert_eq!(d.len(), OUT.lines().count());
        assert_eq!(check(&d, OUT), Ok(()));
        assert!(check(&d, &OUT.replace("exp", "tanh")).is_err());
    }
}
