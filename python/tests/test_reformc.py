"""The Python package against the Hugging Face fixtures (tests/fixtures, made
by scripts/hf_fixtures.py) and the CLI: parity of logits, losses and
gradients, array conversions, and the messages of bad input.

Tolerances are those of the Rust golden tests (tests/golden_hf.rs,
tests/grad_hf.rs): f32 logits within 1e-4 of HF's float64 logits, f64 ones
within 1e-9; losses within 1e-5 relative, gradients within 1e-4 of each
tensor's largest value (floored at 1e-3 of the case's largest gradient).
"""

import ctypes
import json
import re
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import reformc

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CASE = FIXTURES / "causal_lsh_r1"
MASKED = FIXTURES / "noncausal_mask_b2"
# Every fixture a replayed-bucket run can be compared on.
ALL = sorted(p.name for p in FIXTURES.iterdir() if (p / "logits_f64.npy").exists())


def load(case, name):
    return np.load(case / name)


def replay(case):
    """The call arguments that replay HF's run: ids, mask, recorded buckets."""
    kw = {}
    if (case / "attention_mask.npy").exists():
        kw["attention_mask"] = load(case, "attention_mask.npy")
    if (case / "lsh_buckets.npy").exists():
        kw["lsh_buckets"] = load(case, "lsh_buckets.npy")
    return load(case, "input_ids.npy"), kw


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def read_safetensors_f64(path):
    """The F64 tensors of a safetensors file (8-byte header length, JSON
    header, little-endian data), without the safetensors package."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F64", name
        start, end = info["data_offsets"]
        data = np.frombuffer(raw[8 + n + start : 8 + n + end], dtype="<f8")
        out[name] = data.reshape(info["shape"])
    return out


@pytest.fixture(scope="module")
def model():
    return reformc.compile(CASE)


# --- parity -----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_replayed_buckets_match_hf_float64_in_f32(name):
    case = FIXTURES / name
    m = reformc.compile(case)
    ids, kw = replay(case)
    out = m(ids, **kw)
    assert out.dtype == np.float32
    want = load(case, "logits_f64.npy")
    assert out.shape == want.shape
    err = max_diff(out, want)
    assert err <= 1e-4, f"{name}: f32 logits differ from HF float64 by {err:e}"


@pytest.mark.parametrize("name", ["causal_lsh_r1", "noncausal_mask_b2", "causal_mixed_padded"])
def test_f64_precision_matches_hf_within_1e_9(name):
    case = FIXTURES / name
    m = reformc.compile(case / "config.json", weights=case / "model.safetensors", precision="f64")
    ids, kw = replay(case)
    out = m(ids, **kw)
    assert out.dtype == np.float64
    err = max_diff(out, load(case, "logits_f64.npy"))
    assert err <= 1e-9, f"{name}: f64 logits differ from HF by {err:e}"


def test_same_output_as_the_cli(model, tmp_path):
    """`reformc run` with the same flags writes the same array (the engine is the same)."""
    exe = ROOT / "target" / "debug" / "reformc"
    if not exe.exists():
        pytest.skip(f"no CLI binary at {exe} (cargo build builds it)")
    ids = load(CASE, "input_ids.npy")
    out = tmp_path / "out.npy"
    subprocess.run(
        [exe, "run", CASE / "config.json", "--weights", CASE / "model.safetensors",
         "--input", CASE / "input_ids.npy", "--output", out, "--seed", "7", "-q"],
        check=True, capture_output=True,
    )
    np.testing.assert_array_equal(model(ids, seed=7), np.load(out))


def test_seed_and_rotations_choose_the_hashing(model):
    ids = load(CASE, "input_ids.npy")
    a, b = model(ids, seed=1), model(ids, seed=1)
    np.testing.assert_array_equal(a, b)
    assert max_diff(a, model(ids, seed=2)) > 0, "another seed draws other rotations"
    # HF's rotations reproduce HF's bucket decisions, so its logits.
    rot = model(ids, lsh_rotations=load(CASE, "lsh_rotations.npy"))
    assert max_diff(rot, load(CASE, "logits_f64.npy")) <= 1e-4


def test_options_of_run():
    """threads (runs are deterministic across thread counts), the interpreter,
    a pipeline of no pass, and forced full attention all give HF's logits."""
    ids, kw = replay(CASE)
    want = load(CASE, "logits_f64.npy")
    base = reformc.compile(CASE)(ids, **kw)
    np.testing.assert_array_equal(reformc.compile(CASE, threads=1)(ids, **kw), base)
    for options in [dict(interp=True), dict(pipeline="none"), dict(seq_len=64, batch=1)]:
        out = reformc.compile(CASE, **options)(ids, **kw)
        assert max_diff(out, want) <= 1e-4, options
    # Full attention is another model than LSH: it must change the logits.
    full = reformc.compile(CASE, attention="full")(ids, **kw)
    assert full.shape == base.shape and max_diff(full, base) > 1e-3


def test_grad_matches_hf_loss_and_gradients():
    case = FIXTURES / "causal_mixed_r2"
    m = reformc.compile(case, no_dropout=True)
    ids, kw = replay(case)
    loss, grads = m.grad(ids, labels=load(case, "labels.npy"), **kw)
    want = float(load(case, "loss_f64.npy"))
    assert abs(loss - want) / abs(want) <= 1e-5, (loss, want)
    ref = read_safetensors_f64(case / "grads_f64.safetensors")
    assert set(grads) == set(ref)
    floor = 1e-3 * max(float(np.max(np.abs(r))) for r in ref.values())
    for name, r in ref.items():
        g = grads[name]
        assert g.shape == r.shape, name
        scale = max(float(np.max(np.abs(r))), floor)
        err = max_diff(g, r) / scale
        assert err <= 1e-4, f"gradient of {name} off by {err:e} (relative)"


def test_bf16_precision_is_the_clis_and_near_f32(tmp_path):
    """precision="bf16" (bf16 products, f32 accumulation): the logits the CLI's
    `run --precision bf16` writes, within 1e-2 relative RMS of HF's float64
    ones, not f32's bits; `grad` in bf16 stays within 1e-3 of HF's loss and 15%
    relative RMS of every gradient (the CLI test's bounds)."""
    ids, kw = replay(CASE)
    m16 = reformc.compile(CASE, precision="bf16")
    out = m16(ids, **kw)
    want = load(CASE, "logits_f64.npy")
    rms = np.sqrt(np.mean((out - want) ** 2) / np.mean(want**2))
    assert rms <= 1e-2, rms
    assert max_diff(out, reformc.compile(CASE)(ids, **kw)) > 0, "bf16 changes the logits"
    exe = ROOT / "target" / "debug" / "reformc"
    if exe.exists():
        cli_out = tmp_path / "cli.npy"
        subprocess.run(
            [exe, "run", CASE, "--input", CASE / "input_ids.npy", "--lsh-buckets",
             CASE / "lsh_buckets.npy", "--precision", "bf16", "-o", cli_out, "-q"],
            check=True, capture_output=True,
        )
        np.testing.assert_array_equal(out, np.load(cli_out))
    case = FIXTURES / "causal_mixed_r2"
    ids, kw = replay(case)
    loss, grads = reformc.compile(case, no_dropout=True, precision="bf16").grad(
        ids, labels=load(case, "labels.npy"), **kw
    )
    hf_loss = float(load(case, "loss_f64.npy"))
    assert abs(loss - hf_loss) / abs(hf_loss) <= 1e-3, (loss, hf_loss)
    ref = read_safetensors_f64(case / "grads_f64.safetensors")
    floor = 1e-3 * max(float(np.linalg.norm(r)) for r in ref.values())
    for name, r in ref.items():
        err = float(np.linalg.norm(grads[name] - r)) / max(float(np.linalg.norm(r)), floor)
        assert err <= 0.15, f"bf16 gradient of {name}: relative RMS error {err:e}"


# --- arrays -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint8, np.uint16, np.uint64])
def test_any_integer_dtype(model, dtype):
    ids = load(CASE, "input_ids.npy")
    want = model(ids, seed=3)
    np.testing.assert_array_equal(model(ids.astype(dtype), seed=3), want)


def test_fortran_order_and_strided_views():
    case = FIXTURES / "noncausal_mask_b2"
    m = reformc.compile(case)
    ids, kw = replay(case)
    want = m(ids, **kw)
    fortran = {k: np.asfortranarray(v) for k, v in kw.items()}
    assert not np.asfortranarray(ids).flags.c_contiguous
    np.testing.assert_array_equal(m(np.asfortranarray(ids), **fortran), want)
    # A view with a step: every other column of a wider array.
    wide = np.repeat(ids, 2, axis=1)
    np.testing.assert_array_equal(m(wide[:, ::2], **kw), want)


def test_lists_are_arrays(model):
    ids = load(CASE, "input_ids.npy")
    np.testing.assert_array_equal(model(ids.tolist(), seed=4), model(ids, seed=4))


class ArrayOnly:
    """An object that is an array only through __array__ (as torch tensors are)."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class DlpackOnly:
    """An object that is an array only through __dlpack__ (numpy arrays implement it)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_array_and_dlpack_objects(model):
    ids = load(CASE, "input_ids.npy")
    want = model(ids, seed=5)
    np.testing.assert_array_equal(model(ArrayOnly(ids), seed=5), want)
    if not hasattr(np, "from_dlpack"):
        pytest.skip(f"numpy {np.__version__} has no from_dlpack (numpy >= 1.22 has)")
    np.testing.assert_array_equal(model(DlpackOnly(ids), seed=5), want)


def test_torch_tensors_in_and_out(model):
    ids = load(CASE, "input_ids.npy")
    want = model(ids, seed=6)
    try:
        import torch
    except ImportError:
        pytest.skip(
            "torch is not installed in this venv: test_array_and_dlpack_objects covers "
            "__array__/__dlpack__ with stand-ins, test_as_torch_needs_torch the error"
        )
    out = model(torch.from_numpy(ids), seed=6, as_torch=True)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), want)


def test_as_torch_needs_torch(model, monkeypatch):
    """Without torch, as_torch=True is a ReformcError naming the package (torch
    is imported only then: hiding it from the import system shows that)."""
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kw):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    ids = load(CASE, "input_ids.npy")
    assert "as_torch=True needs torch" in error(model, ids, seed=6, as_torch=True)


def test_the_gil_is_released_while_running(model):
    """A Python thread keeps counting while the main thread is inside a call
    (with the GIL held it would stand still), and two threads running one
    model at once get the same answer."""
    ids = load(CASE, "input_ids.npy")
    # A fresh model: its first call JIT-compiles, long enough to count ticks.
    fresh = reformc.compile(CASE)
    count, stop = [0], threading.Event()

    def tick():
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=tick)
    t.start()
    try:
        time.sleep(0.02)
        before = count[0]
        start = time.perf_counter()
        want = fresh(ids, seed=8)
        during, seconds = count[0] - before, time.perf_counter() - start
    finally:
        stop.set()
        t.join()
    assert during > 1000, f"only {during} ticks in a {seconds:.3f} s call: the GIL was held"

    results = []

    def work():
        for _ in range(3):
            results.append(model(ids, seed=8))

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 6
    for r in results:
        np.testing.assert_array_equal(r, want)


def test_jit_modules_are_kept_across_calls():
    """The first call at a (hashing source, length) JIT-compiles; later calls
    reuse the module, and give the same numbers; a new length compiles once
    more; the interpreter compiles nothing."""
    m = reformc.compile(CASE)
    ids = load(CASE, "input_ids.npy")
    first = m(ids, seed=3)
    assert m.jit_compilations == 1
    for _ in range(3):
        np.testing.assert_array_equal(m(ids, seed=3), first)
    np.testing.assert_array_equal(m(ids, seed=4), m(ids, seed=4))
    assert m.jit_compilations == 1, "the seed is an input, not a new module"
    m(ids[:, : ids.shape[1] // 2], seed=3)
    assert m.jit_compilations == 2
    m(ids, lsh_buckets=load(CASE, "lsh_buckets.npy"))
    assert m.jit_compilations == 3
    interp = reformc.compile(CASE, interp=True)
    interp(ids, seed=3)
    assert interp.jit_compilations == 0


# --- explain, dump, signature -------------------------------------------------


def test_explain_dump_signature_match_the_cli(model):
    text = model.explain(64, threads=1)
    assert "lsh" in text.lower()
    ir = model.dump()
    assert "input_ids" in ir
    assert "digraph" in model.dump(format="dot")
    sig = json.loads(model.signature)
    assert isinstance(sig, dict) and sig
    assert "input_ids" in model.signature
    exe = ROOT / "target" / "debug" / "reformc"
    if not exe.exists():
        pytest.skip(f"no CLI binary at {exe} (cargo build builds it)")
    cli = subprocess.run(
        [exe, "explain", CASE / "config.json", "--seq-len", "64", "--threads", "1", "-q"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert untimed(text) == untimed(cli)
    cli_ir = subprocess.run(
        [exe, "dump", CASE / "config.json", "--weights", CASE / "model.safetensors", "-q"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert ir == cli_ir


def test_signature_is_the_compiled_librarys(model, tmp_path):
    """`m.signature` equals what `reformc compile --emit lib --target-cpu host`
    builds into the library (its `reformc_model_signature()`), read back
    through ctypes: the JIT always targets the host."""
    exe = ROOT / "target" / "debug" / "reformc"
    if not exe.exists():
        pytest.skip(f"no CLI binary at {exe} (cargo build builds it)")
    lib = tmp_path / "model.so"
    subprocess.run(
        [exe, "compile", CASE / "config.json", "--weights", CASE / "model.safetensors",
         "--emit", "lib", "--target-cpu", "host", "-o", lib, "-q"],
        check=True, capture_output=True,
    )
    f = ctypes.CDLL(str(lib)).reformc_model_signature
    f.restype = ctypes.c_char_p
    want = json.loads(f().decode())
    got = json.loads(model.signature)
    assert [v["name"] for v in got["variants"]] == ["seeded", "rotations", "buckets"]
    assert got == want


def untimed(text):
    """`text` with its wall times (e.g. `25.3µs`, `1.6ms`) replaced: they differ run to run."""
    return re.sub(r"\d+(\.\d+)?(µs|ns|ms|s)\b", "T", text)


# --- errors -----------------------------------------------------------------


def test_error_class():
    assert issubclass(reformc.ReformcError, ValueError)
    assert issubclass(reformc.ReformcError, Exception)


def error(fn, *args, **kw):
    with pytest.raises(reformc.ReformcError) as e:
        fn(*args, **kw)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_float_input_is_refused(model):
    ids = load(CASE, "input_ids.npy")
    m = error(model, ids.astype(np.float32))
    assert m == "input_ids: token ids [B, L]: expected an integer array (int64, int32, ...), found dtype float32"


def test_wrong_rank_and_shape(model):
    ids = load(CASE, "input_ids.npy")
    assert "expected a rank-2 array, found shape [64]" in error(model, ids[0])
    mask = np.ones((1, 32), np.int64)
    assert "attention mask: expected shape [1, 64] (that of the token ids), found [1, 32]" in error(
        model, ids, attention_mask=mask
    )
    rot = load(CASE, "lsh_rotations.npy")
    assert "LSH rotations [n_lsh_layers, H, d, r, S/2]: expected shape" in error(
        model, ids, lsh_rotations=rot[:1]
    )
    assert "expected a non-empty [B, L] array" in error(model, np.zeros((1, 0), np.int64))


def test_out_of_range_ids_buckets_and_nonfinite_rotations(model):
    ids = load(CASE, "input_ids.npy").copy()
    ids[0, 3] = 999
    assert "token id 999 at [0, 3] is out of range: the vocabulary has 48 entries" in error(model, ids)
    ids = load(CASE, "input_ids.npy")
    b = load(CASE, "lsh_buckets.npy").copy()
    b.reshape(-1)[4] = -1
    assert "bucket id -1 at flat index 4" in error(model, ids, lsh_buckets=b)
    rot = load(CASE, "lsh_rotations.npy").copy()
    rot.reshape(-1)[11] = np.nan
    assert "non-finite value NaN at flat index 11" in error(model, ids, lsh_rotations=rot)
    assert "not both" in error(
        model, ids, lsh_rotations=load(CASE, "lsh_rotations.npy"), lsh_buckets=load(CASE, "lsh_buckets.npy")
    )
    assert "seed: expected an integer, found float" in error(model, ids, seed=1.5)
    assert "seed: 18446744073709551616 does not fit in int64" == error(model, ids, seed=2**64)


def test_too_long_input(model):
    ids = np.zeros((1, 100000), np.int64)
    assert "exceeds max_position_embeddings" in error(model, ids)


def test_missing_files_and_bad_options(tmp_path):
    assert "no such file" in error(reformc.compile, tmp_path / "nope")
    shutil.copy(CASE / "config.json", tmp_path / "config.json")
    assert "the model folder has no weights" in error(reformc.compile, tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK")
    assert "a PyTorch pickle" in error(reformc.compile, tmp_path)
    missing = error(reformc.compile, CASE, weights=tmp_path / "w.safetensors")
    assert "w.safetensors" in missing
    assert "precision: invalid value 'f16' (possible values: f32, f64, bf16)" == error(
        reformc.compile, CASE, precision="f16"
    )
    assert "LLVM JIT only" in error(reformc.compile, CASE, precision="bf16", interp=True)
    assert "seq_len: 0 is not in 1..=4294967296" == error(reformc.compile, CASE, seq_len=0)
    assert "pipeline:" in error(reformc.compile(CASE, pipeline="no-such-pass"), load(CASE, "input_ids.npy"))
    (tmp_path / "config.json").write_text("{not json")
    assert "config.json" in error(reformc.compile, tmp_path / "config.json", weights=CASE / "model.safetensors")


def test_messages_are_the_clis(tmp_path):
    """A bad config reads the same through the CLI and the package."""
    exe = ROOT / "target" / "debug" / "reformc"
    if not exe.exists():
        pytest.skip(f"no CLI binary at {exe} (cargo build builds it)")
    cfg = json.loads((CASE / "config.json").read_text())
    cfg["num_attention_heads"] = 0
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    mine = error(reformc.compile, p, weights=CASE / "model.safetensors")
    r = subprocess.run(
        [exe, "run", p, "--weights", CASE / "model.safetensors", "--input", CASE / "input_ids.npy",
         "--output", tmp_path / "o.npy"],
        capture_output=True, text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {mine}"


def test_grad_needs_an_lm_head_and_valid_labels():
    case = FIXTURES / "causal_mixed_r2"
    m = reformc.compile(case, no_dropout=True)
    ids, kw = replay(case)
    labels = load(case, "labels.npy").copy()
    labels[0, 1] = 10_000
    assert "label 10000 at [0, 1] is out of range" in error(m.grad, ids, labels=labels, **kw)


def test_recompute_layers_option():
    # Reversible layers recompute anyway: "all" changes nothing here, and a
    # bad value is refused before anything is read.
    case = FIXTURES / "causal_mixed_r2"
    ids, kw = replay(case)
    _, kept = reformc.compile(case, no_dropout=True, recompute_layers="none").grad(ids, **kw)
    _, redone = reformc.compile(case, no_dropout=True, recompute_layers="all").grad(ids, **kw)
    assert all(np.array_equal(kept[n], redone[n]) for n in kept)
    message = error(reformc.compile, case, recompute_layers="some")
    assert "recompute_layers" in message and "auto, none, all" in message, message


# --- training ---------------------------------------------------------------

TRAIN = FIXTURES / "causal_mixed_r2"  # an LM head, vocab 48, up to 64 tokens
# A short run: 3 steps of 2 windows of 32 tokens, on the interpreter (the
# JIT takes seconds to compile a step; test_progress_lines_... uses it).
RUN = dict(steps=3, seq_len=32, batch=2, lr=0.01, seed=5, interp=True)


def train_tokens(n=300):
    """A learnable stream of ids in [0, 48)."""
    return (np.arange(n) * 7 % 48).astype(np.int64)


def cli():
    exe = ROOT / "target" / "debug" / "reformc"
    if not exe.exists():
        pytest.skip(f"no CLI binary at {exe} (cargo build builds it)")
    return exe


def cli_train(data, out, **run):
    """`reformc train` with `run` as flags; the loss of each progress line (4 decimals)."""
    flags = []
    for k, v in run.items():
        flag = f"--{k.replace('_', '-')}"
        flags += [flag] if v is True else [flag, str(v)]
    r = subprocess.run(
        [cli(), "train", TRAIN, "--data", data, "--out", out, *flags],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    return [float(l.split()[3]) for l in r.stdout.splitlines() if l.startswith("step ")]


def checkpoint_step(path):
    """The `step` a checkpoint's safetensors metadata records."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return int(json.loads(raw[8 : 8 + n])["__metadata__"]["step"])


def test_train_matches_the_cli(tmp_path):
    """Same settings, same engine: the same checkpoint file, byte for byte,
    and the losses the CLI prints."""
    data = tmp_path / "tokens.npy"
    np.save(data, train_tokens())
    cli_losses = cli_train(data, tmp_path / "cli.safetensors", **RUN)
    r = reformc.train(TRAIN, train_tokens(), out=tmp_path / "py.safetensors", log_every=0, **RUN)
    assert set(r) == {"losses", "checkpoints", "step", "out"}
    assert r["losses"].dtype == np.float64 and r["losses"].shape == (3,)
    assert (r["checkpoints"], r["step"], r["out"]) == ([3], 3, str(tmp_path / "py.safetensors"))
    np.testing.assert_allclose(r["losses"], cli_losses, atol=5.01e-5)
    cli_bytes = (tmp_path / "cli.safetensors").read_bytes()
    assert (tmp_path / "py.safetensors").read_bytes() == cli_bytes
    # The same stream from the .npy file trains the same.
    again = reformc.train(TRAIN, data, out=tmp_path / "file.safetensors", log_every=0, **RUN)
    np.testing.assert_array_equal(again["losses"], r["losses"])
    assert (tmp_path / "file.safetensors").read_bytes() == cli_bytes


def test_train_in_bf16_matches_the_cli(tmp_path):
    """``precision="bf16"`` is ``--precision bf16`` (on the LLVM JIT): the same
    checkpoint bytes as the CLI's bf16 run, other bytes than the f32 run's,
    losses within 2%; the interpreter refuses it."""
    data = tmp_path / "tokens.npy"
    np.save(data, train_tokens())
    run = {k: v for k, v in RUN.items() if k != "interp"}
    cli_train(data, tmp_path / "cli.safetensors", precision="bf16", **run)
    r = reformc.train(TRAIN, data, out=tmp_path / "py.safetensors", log_every=0, precision="bf16", **run)
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    f32 = reformc.train(TRAIN, data, out=tmp_path / "f32.safetensors", log_every=0, **run)
    assert (tmp_path / "f32.safetensors").read_bytes() != (tmp_path / "py.safetensors").read_bytes()
    np.testing.assert_allclose(r["losses"], f32["losses"], rtol=2e-2)
    with pytest.raises(reformc.ReformcError, match="precision: invalid value 'f64'"):
        reformc.train(TRAIN, data, out=tmp_path / "x.safetensors", precision="f64", **run)
    with pytest.raises(reformc.ReformcError, match="LLVM JIT only"):
        reformc.train(TRAIN, data, out=tmp_path / "x.safetensors", precision="bf16", **RUN)


def test_train_with_a_schedule_and_clipping_matches_the_cli(tmp_path):
    """``lr_decay``, ``decay_steps``, ``max_grad_norm`` and ``grad_accum`` are
    the CLI's ``--lr-decay``, ``--decay-steps``, ``--max-grad-norm`` and
    ``--grad-accum``: the same checkpoint bytes, other bytes than without
    them; bad values refused."""
    data = tmp_path / "tokens.npy"
    np.save(data, train_tokens())
    sched = dict(lr_decay="linear", decay_steps=3, max_grad_norm=0.01, grad_accum=2)
    cli_train(data, tmp_path / "cli.safetensors", **sched, **RUN)
    reformc.train(TRAIN, data, out=tmp_path / "py.safetensors", log_every=0, **sched, **RUN)
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    reformc.train(TRAIN, data, out=tmp_path / "plain.safetensors", log_every=0, **RUN)
    assert (tmp_path / "plain.safetensors").read_bytes() != (tmp_path / "py.safetensors").read_bytes()
    with pytest.raises(reformc.ReformcError, match="lr_decay: invalid value 'exp'"):
        reformc.train(TRAIN, data, out=tmp_path / "x.safetensors", lr_decay="exp", **RUN)
    with pytest.raises(reformc.ReformcError, match="max_grad_norm=-1"):
        reformc.train(TRAIN, data, out=tmp_path / "x.safetensors", max_grad_norm=-1, **RUN)


def test_train_with_the_feed_forward_chunked(tmp_path):
    """``chunk_ff`` is ``--chunk-ff``: the chunked feed-forward's fused
    derivative sums the batch's rows in another order than the unchunked
    step (per window, then over windows), so the losses agree to rounding."""
    run = dict(RUN, steps=2, log_every=0)
    plain = reformc.train(TRAIN, train_tokens(), out=tmp_path / "plain.safetensors", **run)
    ff = reformc.train(TRAIN, train_tokens(), out=tmp_path / "ff.safetensors", chunk_ff=8, **run)
    assert ff["losses"][0] == plain["losses"][0]
    np.testing.assert_allclose(ff["losses"], plain["losses"], rtol=1e-6)
    assert (tmp_path / "ff.safetensors").read_bytes() != (tmp_path / "plain.safetensors").read_bytes()


def test_resume_continues_the_run_exactly(tmp_path):
    run = dict(RUN, steps=4, log_every=0)
    whole = reformc.train(TRAIN, train_tokens(), out=tmp_path / "whole.safetensors", **run)
    part = tmp_path / "part.safetensors"
    first = reformc.train(TRAIN, train_tokens(), out=part, **dict(run, steps=2))
    assert (first["checkpoints"], checkpoint_step(part)) == ([2], 2)
    rest = reformc.train(TRAIN, train_tokens(), out=part, resume=part, **run)
    assert (rest["checkpoints"], rest["step"]) == ([4], 4)
    np.testing.assert_array_equal(np.concatenate([first["losses"], rest["losses"]]), whole["losses"])
    assert part.read_bytes() == (tmp_path / "whole.safetensors").read_bytes()


def test_changed_settings_on_resume_are_warnings(tmp_path):
    out = tmp_path / "c.safetensors"
    reformc.train(TRAIN, train_tokens(), out=out, log_every=0, **dict(RUN, steps=1))
    with pytest.warns(UserWarning, match=r"seed differs from the checkpoint's \(5 there, 6 now\)"):
        reformc.train(TRAIN, train_tokens(), out=out, resume=out, log_every=0, **dict(RUN, seed=6))
    assert checkpoint_step(out) == 3


def test_progress_lines_go_to_the_log_function(tmp_path, capsys):
    lines = []
    jit = dict(RUN, interp=False)
    r = reformc.train(TRAIN, train_tokens(), out=tmp_path / "c.safetensors", log=lines.append, **jit)
    steps = [l for l in lines if l.startswith("step ")]
    assert [l.split()[1] for l in steps] == ["1/3", "2/3", "3/3"]
    np.testing.assert_allclose([float(l.split()[3]) for l in steps], r["losses"], atol=5.01e-5)
    assert any(l.startswith("reformc: training step compiled by the LLVM JIT") for l in lines)
    assert capsys.readouterr().out == ""
    # By default they are printed (Jupyter shows them); log_every=0 prints none.
    reformc.train(TRAIN, train_tokens(), out=tmp_path / "c.safetensors", **dict(RUN, steps=1))
    assert "step 1/1  loss " in capsys.readouterr().out
    quiet = []
    reformc.train(TRAIN, train_tokens(), out=tmp_path / "c.safetensors", log=quiet.append,
                  log_every=0, **dict(RUN, steps=1))
    assert quiet == []


def test_an_exception_in_the_log_function_stops_the_run(tmp_path):
    out = tmp_path / "c.safetensors"

    def log(line):
        if line.startswith("step 2/"):
            raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        reformc.train(TRAIN, train_tokens(), out=out, log=log, checkpoint_every=1, **RUN)
    assert checkpoint_step(out) == 1, "the checkpoint of the last step before"


def test_ctrl_c_stops_the_run_between_steps(tmp_path):
    """SIGINT while the loop runs with the GIL released, and no progress
    line to notice it: KeyboardInterrupt before the next step, and the
    checkpoint file holds the last checkpoint."""
    import os
    import signal

    out = tmp_path / "c.safetensors"
    # A shell that starts the suite in the background makes it ignore SIGINT,
    # and Python then keeps ignoring it: Ctrl-C must mean KeyboardInterrupt
    # here whatever the suite inherited.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            reformc.train(TRAIN, train_tokens(), out=out, log_every=0, checkpoint_every=1,
                          **dict(RUN, steps=100_000))
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, inherited)
    assert 1 <= checkpoint_step(out) < 100_000


def test_bad_training_input(tmp_path):
    out = tmp_path / "c.safetensors"
    ids = train_tokens()

    def refused(*args, **kw):
        message = error(reformc.train, *args, **{"out": out, **RUN, **kw})
        assert not out.exists()
        return message

    assert refused(TRAIN, ids, steps=0) == "steps must be at least 1"
    assert refused(TRAIN, ids, steps=-1) == "steps: -1 is not in 0..2**64"
    assert refused(TRAIN, ids, batch=0) == "batch must be at least 1"
    assert refused(TRAIN, ids, lr=0) == "lr=0: the learning rate must be a positive finite number"
    assert refused(TRAIN, ids, optimizer="sgd") == "optimizer: invalid value 'sgd' (possible values: adam, adafactor)"
    assert refused(TRAIN, ids, recompute_layers="some") == "recompute_layers: expected auto, none or all, found `some`"
    assert refused(TRAIN, ids, memory_budget=0) == "memory_budget must be at least 1 (bytes)"
    assert refused(TRAIN, ids, chunk_ff=0) == "chunk_ff must be at least 1 (positions)"
    assert refused(TRAIN, ids.reshape(2, 150)) == "data: token ids [N]: expected a rank-1 array, found shape [2, 150]"
    assert refused(TRAIN, ids.astype(np.float32)).startswith("data: token ids [N]: expected an integer array")
    bad = ids.copy()
    bad[41] = 48
    assert refused(TRAIN, bad) == "data: token id 48 at index 41 is outside [0, 48) (the model's vocab_size)"
    assert refused(TRAIN, ids[:5]) == "data: 5 tokens is shorter than one window of --seq-len 32"
    assert "seq_len: sequence length 1000" in refused(TRAIN, ids, seq_len=1000)
    data = tmp_path / "t.npy"
    np.save(data, ids.reshape(2, 150))
    assert refused(TRAIN, data) == f"{data}: data: expected a 1-D array of token ids, found shape [2, 150]"
    assert "is the same file as data" in error(reformc.train, TRAIN, data, **dict(RUN, out=data))
    # No weights: a config alone, or a weight file that is not there.
    shutil.copy(TRAIN / "config.json", tmp_path / "config.json")
    assert "no such file: pass weights=" in refused(tmp_path / "config.json", ids)
    missing = refused(TRAIN, ids, weights=tmp_path / "w.safetensors")
    assert "w.safetensors" in missing
    qa = ROOT / "tests" / "fixtures_heads" / "qa_noncausal_b2"
    assert refused(qa, ids).startswith(
        f"{qa / 'model.safetensors'}: train: the model has a question-answering head"
    )


def test_resume_refusals(tmp_path):
    out = tmp_path / "c.safetensors"
    reformc.train(TRAIN, train_tokens(), out=out, log_every=0, **dict(RUN, steps=2))
    assert error(reformc.train, TRAIN, train_tokens(), resume=out, out=out, log_every=0,
                 **dict(RUN, steps=2)) == "nothing to do: 2 steps are done and --steps is 2"
    m = error(reformc.train, TRAIN, train_tokens(), resume=out, out=out, optimizer="adafactor", **RUN)
    assert m.endswith("the checkpoint's optimizer is adam; optimizer=adafactor cannot continue its state (omit optimizer, or start a new run from weights)")
    m = error(reformc.train, TRAIN, train_tokens(), resume=TRAIN / "model.safetensors", out=out, **RUN)
    assert "not a reformc checkpoint" in m
