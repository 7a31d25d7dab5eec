//! Command-line conveniences: `run --time` and `-o`, `help --help`, and
//! `explain`'s default length (the model's longest input, not a guess).

use crate::common;

use std::process::{Command, Output};

const CASE: &str = "tests/fixtures/causal_mixed_r2";

fn reformc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn run_time_reports_every_phase() {
    let out = std::env::temp_dir().join(format!("reformc-usability-{}.npy", std::process::id()));
    let ids = format!("{CASE}/input_ids.npy");
    let o = reformc(&[
        "run",
        CASE,
        "--input",
        &ids,
        "-o",
        out.to_str().unwrap(),
        "--time",
        "-q",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("time: "))
        .expect("a time line");
    let phases: Vec<&str> = line["time: ".len()..]
        .split(", ")
        .map(|p| p.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["load", "passes", "compile", "run", "write", "total"],
        "{line}"
    );
    let _ = std::fs::remove_file(out);
}

#[test]
fn help_help_prints_the_help() {
    for flag in ["--help", "-h"] {
        let o = reformc(&["help", flag]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert!(out.contains("Usage: reformc <COMMAND>"), "{out}");
    }
}

#[test]
fn explain_defaults_to_the_longest_input_and_warns_beyond_it() {
    let o = reformc(&["explain", CASE]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains(" L=64 "), "{out}");
    assert!(
        out.contains("note: no --seq-len given: explained at L=64, the longest input the model's position embeddings allow"),
        "{out}"
    );
    let o = reformc(&["explain", CASE, "--seq-len", "128"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains(" L=128 "), "{out}");
    assert_eq!(
        err.trim(),
        "warning: --seq-len 128 exceeds the longest input the model takes (64, its position embeddings): a run at this length is refused"
    );
}

#[test]
fn compile_name_must_be_a_c_prefix_on_a_linkable_artifact() {
    let out = std::env::temp_dir().join(format!("reformc-usability-{}.so", std::process::id()));
    let o = out.to_str().unwrap();
    let cases = [
        (
            vec!["--emit", "lib", "--name", "2x"],
            "--name \"2x\": expected a C identifier prefix",
        ),
        (
            vec!["--name", "tiny"],
            "--name applies to --emit lib, staticlib, obj, llvm and asm",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["compile", CASE, "-o", o];
        args.extend(extra);
        let r = reformc(&args);
        let (_, err) = text(&r);
        assert_eq!(r.status.code(), Some(2), "{err}");
        assert!(err.starts_with(&format!("error: {want}")), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn dot_output_renders_with_graphviz_and_draws_regions_as_clusters() {
    // scripts/setup.sh installs graphviz; a missing `dot` fails, never skips.
    let o = reformc(&[
        "dump",
        "examples/tiny-reformer",
        "--format",
        "dot",
        "--chunk-ff",
        "16",
        "-q",
    ]);
    let (dot_text, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        dot_text.contains("subgraph cluster_"),
        "regions are clusters"
    );
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("graphviz `dot` (scripts/setup.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot_text.as_bytes())
        .unwrap();
    let r = child.wait_with_output().unwrap();
    let (svg, err) = text(&r);
    assert!(r.status.success(), "dot: {err}");
    assert!(err.is_empty(), "dot warned: {err}");
    assert!(
        svg.contains("<svg") && svg.contains("class=\"cluster\""),
        "{}",
        &svg[..svg.len().min(300)]
    );
}

#[test]
fn progress_shows_on_a_terminal_only_and_q_silences_it() {
    let out = std::env::temp_dir().join(format!("reformc-progress-{}.npy", std::process::id()));
    let bin = env!("CARGO_BIN_EXE_reformc");
    let run = format!(
        "{bin} run {CASE} --input {CASE}/input_ids.npy -o {} --pipeline none",
        out.display()
    );
    // `script` runs the command on a pseudo-terminal (util-linux, in every Debian).
    let on_tty = |cmd: &str| {
        let o = Command::new("script")
            .args(["-qec", cmd, "/dev/null"])
            .current_dir(common::root())
            .env("TERM", "xterm")
            .output()
            .expect("script(1) from util-linux");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let shown = on_tty(&run);
    for phase in [
        "reformc: loading the model",
        "reformc: JIT compiling",
        "reformc: running...",
    ] {
        assert!(shown.contains(phase), "{phase}: {shown:?}");
    }
    assert!(
        !on_tty(&format!("{run} -q")).contains("\x1b[2K"),
        "-q silences it"
    );
    let piped = reformc(&[
        "run",
        CASE,
        "--input",
        &format!("{CASE}/input_ids.npy"),
        "-o",
        out.to_str().unwrap(),
        "--pipeline",
        "none",
    ]);
    let (_, err) = text(&piped);
    assert!(piped.status.success(), "{err}");
    assert!(
        !err.contains("\x1b[2K") && !err.contains("JIT compiling"),
        "quiet in pipes: {err:?}"
    );
    let _ = std::fs::remove_file(out);
}

#[test]
fn artifacts_target_a_portable_cpu_by_default() {
    let exe = std::env::temp_dir().join(format!("reformc-portable-{}", std::process::id()));
    let o = reformc(&["compile", CASE, "-o", exe.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains(", target x86-64-v3)"), "{out}");
    let sig = Command::new(&exe).arg("--signature").output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&sig.stdout).unwrap();
    assert_eq!(json["target_cpu"], "x86-64-v3");
    let _ = std::fs::remove_file(exe);
}

#[test]
fn version_says_where_the_runtime_archive_comes_from() {
    let out = reformc(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("reformc "), "{text}");
    // Test builds do not embed it, release builds do (README "Installing").
    let embedded = text.contains("runtime archive: embedded (");
    let searched =
        text.contains("runtime archive: not embedded") && text.contains("REFORMC_RUNTIME_LIB");
    assert!(embedded != searched, "{text}");
}
