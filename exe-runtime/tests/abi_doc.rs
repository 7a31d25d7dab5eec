//! `runtime/ABI.md` lists every C function of the runtime as its `c_abi!`
//! declaration generates it. When a declaration changes, this test fails;
//! `REFORMC_BLESS=1 cargo test -p reformc-exe-runtime --test abi_doc`
//! rewrites the generated part of the file.

use std::path::Path;

const BEGIN: &str = "<!-- BEGIN GENERATED: the c_abi! declarations (REFORMC_BLESS=1 cargo test -p reformc-exe-runtime --test abi_doc) -->\n";
const END: &str = "<!-- END GENERATED -->\n";

#[test]
fn abi_md_signatures_are_the_declarations() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/ABI.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find(BEGIN)
        .expect("runtime/ABI.md has the BEGIN GENERATED marker")
        + BEGIN.len();
    let end = start
        + text[start..]
            .find(END)
            .expect("runtime/ABI.md has the END GENERATED marker");
    let want = reformc_exe_runtime::abi_signatures_markdown();
    if text[start..end] == want {
        return;
    }
    if std::env::var_os("REFORMC_BLESS").is_some_and(|v| v == "1") {
        let new = format!("{}{want}{}", &text[..start], &text[end..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    panic!(
        "runtime/ABI.md is stale: rerun with REFORMC_BLESS=1 to regenerate its signatures.\n--- generated ---\n{want}"
    );
}

#[test]
fn every_function_is_documented_and_distinct() {
    let mut names = Vec::new();
    for s in reformc_exe_runtime::SECTIONS {
        for k in s.kernels {
            assert!(!k.summary().is_empty(), "{} has no documentation", k.name);
            names.push(k.name);
        }
    }
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n, "a function is declared twice");
}

/// No `extern "C"` function is defined outside a `c_abi!` block: each
/// would be a second, unchecked declaration.
#[test]
fn every_c_function_is_declared_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["runtime/src", "runtime/src/attention", "exe-runtime/src"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                let src = std::fs::read_to_string(&p).unwrap();
                for (i, line) in src.lines().enumerate() {
                    let t = line.trim_start();
                    let defines = t.starts_with("pub unsafe extern \"C\" fn")
                        || t.starts_with("pub extern \"C\" fn")
                        || t.starts_with("#[no_mangle]");
                    let in_macro = p.ends_with("abi.rs");
                    assert!(
                        !defines || in_macro,
                        "{}:{}: `{t}` outside c_abi!",
                        p.display(),
                        i + 1
                    );
                }
            }
        }
    }
}
