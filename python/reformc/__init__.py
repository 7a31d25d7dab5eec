"""reformc: compile a Reformer model and run it in this process.

    import numpy as np, reformc
    m = reformc.compile("tests/fixtures/causal_lsh_r1")   # config.json + model.safetensors
    logits = m(np.load("input_ids.npy"))                  # [B, L, V] float32

The engine is reformc's LLVM JIT, as `reformc run` uses it; the arrays and
options mean what `reformc run`'s flags of the same names mean. Failures
raise `ReformcError` with the message the CLI prints after ``error:``.

`train` runs `reformc train`'s loop in this process:

    r = reformc.train("tests/fixtures/causal_mixed_r2", np.load("tokens.npy"),
                      steps=100, seq_len=32, out="ckpt.safetensors", lr=1e-3)
    r["losses"]                                            # one per step
"""

import os

import numpy as np

from ._reformc import Model as _Model
from ._reformc import ReformcError
from ._reformc import compile as _compile
from ._reformc import train as _train

__all__ = ["compile", "train", "Model", "ReformcError"]


def compile(path_or_config, weights=None, **options):
    """Reads a model and returns it ready to run.

    ``path_or_config`` is a config.json (Hugging Face or reformc's schema) or a
    folder holding ``config.json`` and ``model.safetensors``; ``weights`` is the
    ``.safetensors`` file (default: ``model.safetensors`` beside the config).

    Options (keywords), as `reformc run`'s flags: ``seq_len``, ``precision``
    ("f32", "f64", or "bf16": bf16 matrix products accumulated in f32, for
    runs and ``grad`` alike, on the JIT only), ``lm_head_bias``, ``allow_nonfinite_weights``,
    ``interp`` (the reference interpreter instead of the JIT), ``threads``
    (kernel worker threads, 0 = all cores), ``pipeline``, ``attention``,
    ``kv_chunk``, ``batch``, ``memory_budget``, ``chunk_ff``,
    ``chunk_lm_head``, ``no_dropout`` and ``recompute_layers`` ("auto", "none" or
    "all"; training steps), ``quiet`` (default
    True: no pass progress on stderr).
    """
    path = os.fspath(path_or_config)
    if weights is not None:
        weights = os.fspath(weights)
    return Model(_compile(path, weights, **options))


def train(
    model,
    data,
    *,
    steps,
    seq_len,
    out,
    weights=None,
    batch=1,
    grad_accum=1,
    optimizer=None,
    lr=None,
    warmup=None,
    weight_decay=None,
    seed=None,
    checkpoint_every=None,
    log_every=1,
    resume=None,
    interp=False,
    threads=0,
    dropout=True,
    lm_head_bias=False,
    log=None,
    memory_budget=None,
    recompute_layers="auto",
    chunk_ff=None,
    chunk_lm_head=None,
    precision="f32",
    lr_decay=None,
    decay_steps=None,
    max_grad_norm=None,
):
    """Trains a model on a token stream, as `reformc train`: the same windows,
    steps, optimizers and checkpoints, so the same settings give the same
    losses and checkpoint files.

    ``model`` is a config.json or a Hugging Face model folder, as
    `compile` takes; ``weights`` the initial weights (default: the folder's,
    or ``model.safetensors`` beside the config). ``data`` is a 1-D integer
    array of token ids (anything with ``__array__``) or the path of a 1-D
    integer ``.npy`` file.

    Each step trains on ``batch`` windows of ``seq_len`` tokens (times
    ``grad_accum`` micro-batches whose gradients are averaged, as
    ``--grad-accum``); the run stops
    after ``steps`` steps in all and writes its checkpoint to ``out`` every
    ``checkpoint_every`` steps and after the last. ``resume`` continues the run
    a checkpoint holds (weights, optimizer state, step, seed; it may be
    ``out``). ``optimizer`` ("adam" or "adafactor"), ``lr``, ``warmup``,
    ``weight_decay``, ``seed``, ``interp``, ``threads`` and ``lm_head_bias``
    are `reformc train`'s flags; ``dropout=False`` is ``--no-dropout``.
    ``memory_budget`` (bytes) and ``recompute_layers`` ("auto", "none" or
    "all") choose which layers that are not reversible the step recomputes in
    the backward pass instead of keeping their activations; the choice is
    logged as a line before the steps. ``chunk_ff`` and ``chunk_lm_head``
    (positions) chunk the feed-forward (its backward too) and the LM head
    along the sequence, as ``--chunk-ff`` and ``--chunk-lm-head`` do.
    ``precision="bf16"`` is ``--precision bf16``: mixed precision, the step's
    matrix products in bf16 with f32 accumulation (the JIT only).
    ``lr_decay`` ("constant", "linear" or "cosine"), ``decay_steps`` and
    ``max_grad_norm`` are ``--lr-decay``, ``--decay-steps`` and
    ``--max-grad-norm``: the learning rate's decay to 0 after warm-up, and
    clipping each step's gradients to a global L2 norm.

    Progress lines (every ``log_every`` steps and after the last) go to
    ``log(line)``, by default ``print``; ``log_every=0`` prints none.
    Settings that differ from a resumed checkpoint's run are ``UserWarning``s.
    Ctrl-C stops the run between steps with ``KeyboardInterrupt``; ``out``
    then holds the last checkpoint written.

    Returns ``{"losses": float64 array (one per step run), "checkpoints":
    [steps at which checkpoints were written], "step": steps done in all,
    "out": the checkpoint path}``.
    """
    if not isinstance(data, (str, os.PathLike)):
        data = _array(data, "data")
    return _train(
        os.fspath(model),
        data,
        steps=_count(steps, "steps"),
        seq_len=_count(seq_len, "seq_len"),
        out=os.fspath(out),
        weights=None if weights is None else os.fspath(weights),
        batch=_count(batch, "batch"),
        grad_accum=_count(grad_accum, "grad_accum"),
        optimizer=optimizer,
        lr=_rate(lr, "lr"),
        warmup=_count(warmup, "warmup"),
        weight_decay=_rate(weight_decay, "weight_decay"),
        seed=_count(seed, "seed"),
        checkpoint_every=_count(checkpoint_every, "checkpoint_every"),
        log_every=_count(log_every, "log_every"),
        resume=None if resume is None else os.fspath(resume),
        interp=bool(interp),
        threads=_count(threads, "threads"),
        dropout=bool(dropout),
        lm_head_bias=bool(lm_head_bias),
        log=log,
        memory_budget=_count(memory_budget, "memory_budget"),
        recompute_layers=str(recompute_layers),
        chunk_ff=_count(chunk_ff, "chunk_ff"),
        chunk_lm_head=_count(chunk_lm_head, "chunk_lm_head"),
        precision=str(precision),
        lr_decay=None if lr_decay is None else str(lr_decay),
        decay_steps=_count(decay_steps, "decay_steps"),
        max_grad_norm=_rate(max_grad_norm, "max_grad_norm"),
    )


class Model:
    """A compiled model: call it with token ids."""

    def __init__(self, compiled):
        self._m = compiled

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        lsh_rotations=None,
        lsh_buckets=None,
        seed=None,
        *,
        as_torch=False,
    ):
        """Logits ``[B, L, V]`` (or a bare model's last hidden state) for token
        ids ``[B, L]`` of any integer dtype, as a numpy array (a torch tensor
        with ``as_torch=True``).

        ``attention_mask`` ``[B, L]`` (0 = padding), ``lsh_rotations``
        ``[n_lsh_layers, H, d, r, S/2]``, ``lsh_buckets``
        ``[n_lsh_layers, B, H, r*L_padded]`` and ``seed`` are `reformc run`'s
        ``--attention-mask``, ``--lsh-rotations``, ``--lsh-buckets`` and
        ``--seed``. Arrays may be numpy arrays or objects with ``__array__`` or
        ``__dlpack__`` (torch tensors on the CPU).
        """
        out = self._m.run(
            _array(input_ids, "input_ids"),
            _array(attention_mask, "attention_mask"),
            _array(lsh_rotations, "lsh_rotations"),
            _array(lsh_buckets, "lsh_buckets"),
            _seed(seed),
        )
        return _torch(out) if as_torch else out

    def grad(
        self,
        input_ids,
        labels=None,
        attention_mask=None,
        lsh_rotations=None,
        lsh_buckets=None,
        seed=None,
        *,
        as_torch=False,
    ):
        """One training step, as `reformc grad`: ``(loss, {weight name: gradient})``.

        ``labels`` ``[B, L]`` default to the token ids; -100 marks an ignored
        position (a causal LM predicts label t+1 at position t).
        """
        loss, grads = self._m.grad(
            _array(input_ids, "input_ids"),
            _array(labels, "labels"),
            _array(attention_mask, "attention_mask"),
            _array(lsh_rotations, "lsh_rotations"),
            _array(lsh_buckets, "lsh_buckets"),
            _seed(seed),
        )
        if as_torch:
            grads = {k: _torch(v) for k, v in grads.items()}
        return loss, grads

    def explain(self, seq_len=None, *, threads=0, train=False, json=False):
        """The table `reformc explain` prints (JSON text with ``json=True``)."""
        return self._m.explain(seq_len, threads=threads, train=train, json=json)

    def dump(self, *, format="text", lsh_source="seeded", seq_len=None, train=False):
        """The IR `reformc dump` prints after the pass pipeline."""
        return self._m.dump(
            format=format, lsh_source=lsh_source, seq_len=seq_len, train=train
        )

    @property
    def signature(self):
        """The JSON signature compiled code reports (``reformc_model_signature()``)."""
        return self._m.signature

    @property
    def jit_compilations(self):
        """How many modules the LLVM JIT has compiled for this model: one per
        (hashing source, length) it has run at; later calls reuse them."""
        return self._m.jit_compilations

    @property
    def config(self):
        """The config file the model was read from."""
        return self._m.config

    @property
    def weights(self):
        """The weight file the model was read from."""
        return self._m.weights

    def __repr__(self):
        return repr(self._m)


def _array(x, name):
    """A numpy array for argument ``name``: numpy arrays as they are, other
    objects through ``__dlpack__`` (zero-copy, e.g. torch CPU tensors) or
    ``__array__`` / sequences (``np.asarray``)."""
    if x is None or isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__") and hasattr(np, "from_dlpack"):
        try:
            return np.from_dlpack(x)
        except (TypeError, ValueError, RuntimeError, BufferError):
            pass  # e.g. a tensor that needs grad, or on a device: try __array__
    try:
        return np.asarray(x)
    except Exception as e:  # what an object's __array__ raises is its own
        raise ReformcError(
            f"{name}: cannot read a {type(x).__name__} as an array: {e}"
        ) from e


def _seed(seed):
    """The seed as an int (numpy and torch integer scalars too)."""
    if seed is None:
        return None
    try:
        s = int(seed.__index__())
    except (AttributeError, TypeError) as e:
        raise ReformcError(
            f"seed: expected an integer, found {type(seed).__name__}"
        ) from e
    if not -(2**63) <= s < 2**63:
        raise ReformcError(f"seed: {s} does not fit in int64")
    return s


def _count(x, name):
    """A non-negative integer argument as an int (None stays None)."""
    if x is None:
        return None
    try:
        n = int(x.__index__())
    except (AttributeError, TypeError) as e:
        raise ReformcError(
            f"{name}: expected an integer, found {type(x).__name__}"
        ) from e
    if not 0 <= n < 2**64:
        raise ReformcError(f"{name}: {n} is not in 0..2**64")
    return n


def _rate(x, name):
    """A float argument (None stays None); its range is checked by reformc."""
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError) as e:
        raise ReformcError(f"{name}: expected a number, found {type(x).__name__}") from e


def _torch(a):
    """A torch tensor sharing ``a``'s memory (torch imported only now)."""
    try:
        import torch
    except ImportError as e:
        raise ReformcError("as_torch=True needs torch: pip install torch") from e
    return torch.from_numpy(a)
