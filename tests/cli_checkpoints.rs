//! The checkpoints users have: a Hugging Face folder in place of config and
//! weights, sharded safetensors, BF16/F16 weight files, and PyTorch pickles
//! (refused with the conversion command). Each form must give exactly the
//! numbers of the equivalent single F32 file.

use crate::common;

use reformc_frontend::weights::WeightFile;
use reformc_tensor::safetensors_write::{write, Blob};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CASE: &str = "tests/fixtures/causal_mixed_r2";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reformc-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn case(f: &str) -> PathBuf {
    common::root().join(CASE).join(f)
}

fn reformc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "stderr: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned() + &err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The fixture's weights, by name.
fn fixture_weights() -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let file = WeightFile::open(&case("model.safetensors")).unwrap();
    file.names()
        .into_iter()
        .map(|n| {
            let (_, shape) = file.info(n).unwrap();
            (n.to_string(), (shape, file.tensor_f32(n).unwrap()))
        })
        .collect()
}

/// Round to nearest even bfloat16, as torch's `.to(torch.bfloat16)` does.
fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn f32_blob(shape: &[u64], v: &[f32]) -> Blob {
    Blob {
        dtype: "F32",
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Writes the fixture as BF16 (`bf16.safetensors`) and, for reference, the
/// same rounded values as F32 (`rounded.safetensors`).
fn write_bf16_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let (mut half, mut rounded) = (BTreeMap::new(), BTreeMap::new());
    for (name, (shape, v)) in fixture_weights() {
        let bits: Vec<u16> = v.iter().map(|&x| to_bf16(x)).collect();
        let back: Vec<f32> = bits
            .iter()
            .map(|&b| f32::from_bits(u32::from(b) << 16))
            .collect();
        half.insert(
            name.clone(),
            Blob {
                dtype: "BF16",
                shape: shape.clone(),
                bytes: bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
            },
        );
        rounded.insert(name, f32_blob(&shape, &back));
    }
    let (h, r) = (
        dir.join("bf16.safetensors"),
        dir.join("rounded.safetensors"),
    );
    write(&h, &half, &BTreeMap::new()).unwrap();
    write(&r, &rounded, &BTreeMap::new()).unwrap();
    (h, r)
}

/// A save_pretrained-style folder whose weights are split over two shards.
fn sharded_folder(dir: &Path) -> PathBuf {
    let folder = dir.join("sharded");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(case("config.json"), folder.join("config.json")).unwrap();
    let (mut shards, mut map) = ([BTreeMap::new(), BTreeMap::new()], serde_json::Map::new());
    for (i, (name, (shape, v))) in fixture_weights().into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        shards[i % 2].insert(name.clone(), f32_blob(&shape, &v));
        map.insert(name, file.into());
    }
    for (i, shard) in shards.iter().enumerate() {
        let file = folder.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        write(&file, shard, &BTreeMap::new()).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    folder
}

fn run(model: &Path, weights: Option<&Path>, out: &Path) -> Output {
    let (ids, buckets) = (case("input_ids.npy"), case("lsh_buckets.npy"));
    let mut args = vec!["run", s(model), "--input", s(&ids), "-o", s(out), "-q"];
    args.extend(["--lsh-buckets", s(&buckets)]);
    if let Some(w) = weights {
        args.extend(["--weights", s(w)]);
    }
    reformc(&args)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn a_folder_stands_for_its_config_and_weights() {
    let dir = scratch("folder");
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    ok(&run(&case(""), None, &a));
    ok(&run(
        &case("config.json"),
        Some(&case("model.safetensors")),
        &b,
    ));
    assert!(read(&a) == read(&b));
    // --weights still wins over the folder's.
    let (h, _) = write_bf16_pair(&dir);
    ok(&run(&case(""), Some(&h), &b));
    assert!(read(&a) != read(&b), "the BF16 weights were used");
}

#[test]
fn bf16_weights_give_the_numbers_of_their_f32_values() {
    let dir = scratch("bf16");
    let (h, r) = write_bf16_pair(&dir);
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    ok(&run(&case("config.json"), Some(&h), &a));
    ok(&run(&case("config.json"), Some(&r), &b));
    assert!(read(&a) == read(&b));
}

#[test]
fn sharded_checkpoints_give_the_numbers_of_one_file() {
    let dir = scratch("sharded");
    let folder = sharded_folder(&dir);
    let (a, b, c) = (dir.join("a.npy"), dir.join("b.npy"), dir.join("c.npy"));
    ok(&run(&folder, None, &a));
    ok(&run(&case(""), None, &b));
    assert!(read(&a) == read(&b));
    let index = folder.join("model.safetensors.index.json");
    ok(&run(&case("config.json"), Some(&index), &c));
    assert!(read(&a) == read(&c));
}

#[test]
fn compiled_executables_map_a_converted_copy() {
    let dir = scratch("compile");
    let folder = sharded_folder(&dir);
    let exe = dir.join("model");
    let o = reformc(&["compile", s(&folder), "-o", s(&exe), "-q"]);
    let said = ok(&o);
    let converted = dir.join("model.safetensors");
    assert!(
        said.contains(&format!(
            "wrote its weights as F32 to {}",
            converted.display()
        )),
        "{said}"
    );
    assert!(WeightFile::open(&converted).unwrap().is_plain_f32());
    // The converted default and the fixture's own F32 file give the same bits.
    let (ids, buckets) = (case("input_ids.npy"), case("lsh_buckets.npy"));
    let run_exe = |out: &Path, weights: Option<&Path>| {
        let mut c = Command::new(&exe);
        c.args([
            "--input",
            s(&ids),
            "--lsh-buckets",
            s(&buckets),
            "--output",
            s(out),
        ]);
        if let Some(w) = weights {
            c.args(["--weights", s(w)]);
        }
        ok(&c.output().unwrap());
    };
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    run_exe(&a, None);
    run_exe(&b, Some(&case("model.safetensors")));
    assert!(
        read(&a) == read(&b),
        "the converted weights are the original values"
    );
}

#[test]
fn pickles_and_empty_folders_are_explained() {
    let dir = scratch("pickle");
    std::fs::copy(case("config.json"), dir.join("config.json")).unwrap();
    let out = dir.join("o.npy");
    let o = run(&dir, None, &out);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the model folder has no weights"), "{err}");
    std::fs::write(dir.join("pytorch_model.bin"), b"PK").unwrap();
    let o = run(&dir, None, &out);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pytorch_model.bin: a PyTorch pickle"), "{err}");
    assert!(
        err.contains("st.save_file("),
        "the one-line conversion: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.exists());
}

#[test]
fn an_executable_compiled_from_a_folder_maps_the_folders_file() {
    let dir = scratch("folder-exe");
    let exe = dir.join("model");
    ok(&reformc(&["compile", s(&case("")), "-o", s(&exe), "-q"]));
    let sig = Command::new(&exe).arg("--signature").output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&sig.stdout).unwrap();
    let want = std::fs::canonicalize(case("model.safetensors")).unwrap();
    assert_eq!(json["weights"]["default_path"], want.to_str().unwrap());
    let (ids, out) = (case("input_ids.npy"), dir.join("o.npy"));
    let o = Command::new(&exe)
        .args(["--input", s(&ids), "--output", s(&out)])
        .output()
        .unwrap();
    ok(&o);
}
