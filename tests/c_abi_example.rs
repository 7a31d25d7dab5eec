//! The user guide's C example (`examples/c-abi/main.c`) builds against a
//! library `reformc compile --emit lib` wrote, runs, and gives the logits
//! `reformc run` gives for the same ids and seed.

use crate::common;

use ndarray::{Array2, ArrayD};
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reformc-c-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check(what: &str, o: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what}: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_c_example_matches_reformc_run() {
    let (root, dir) = (common::root(), scratch());
    let model = root.join("examples/tiny-reformer");
    let so = dir.join("libtiny.so");
    let reformc = env!("CARGO_BIN_EXE_reformc");
    let compile = ["compile", s(&model), "--emit", "lib", "-o", s(&so), "-q"];
    check(
        "compile",
        Command::new(reformc).args(compile).output().unwrap(),
    );
    let prog = dir.join("tiny");
    common::cc_against_library(&root.join("examples/c-abi/main.c"), &dir, &so, &prog);
    let (bin, weights) = (dir.join("logits.bin"), model.join("model.safetensors"));
    let said = check(
        "the example",
        Command::new(&prog)
            .args([s(&weights), s(&bin)])
            .output()
            .unwrap(),
    );
    assert!(said.starts_with("logits: [1, 32, 64] f32\n"), "{said}");
    assert!(
        said.contains("most likely token after the last position: "),
        "{said}"
    );

    // The same ids and seed through `reformc run`.
    let ids = Array2::from_shape_fn((1, 32), |(_, i)| ((7 * i + 3) % 64) as i64);
    let (ids_npy, out) = (dir.join("ids.npy"), dir.join("ref.npy"));
    ndarray_npy::write_npy(&ids_npy, &ids).unwrap();
    let run = [
        "run",
        s(&model),
        "--input",
        s(&ids_npy),
        "--seed",
        "0",
        "-o",
        s(&out),
        "-q",
    ];
    check("run", Command::new(reformc).args(run).output().unwrap());
    let want: ArrayD<f32> = ndarray_npy::read_npy(&out).unwrap();
    let got: Vec<f32> = std::fs::read(&bin)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-4, "max |C - reformc run| = {diff}");
}
