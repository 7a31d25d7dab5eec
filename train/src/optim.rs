//! Optimizers: Adam and Adafactor, with their state as named tensors so that
//! a checkpoint holds it exactly.
//!
//! Arithmetic is f64 on f32 weights, gradients and state; each new state
//! value is rounded to f32 when stored and the update reads the stored value,
//! so an optimizer rebuilt from a checkpoint behaves bit for bit as the one
//! that wrote it.

use ndarray::{ArrayD, IxDyn};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// Adam's hyper-parameters (Kingma & Ba, with bias correction). Weight decay
/// is decoupled (AdamW): `w -= lr·wd·w` beside the Adam step.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    /// Peak learning rate (default 1e-3).
    pub lr: f64,
    /// First-moment decay (0.9).
    pub beta1: f64,
    /// Second-moment decay (0.999).
    pub beta2: f64,
    /// Added to the root of the second moment (1e-8).
    pub eps: f64,
    /// Decoupled weight decay (0).
    pub weight_decay: f64,
    /// Steps of linear warm-up to `lr`.
    pub warmup: u64,
    /// After warm-up: the decay and gradient clipping.
    pub schedule: Schedule,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup: 0,
            schedule: Schedule::default(),
        }
    }
}

/// How the learning rate goes from its peak (the end of warm-up) to the end
/// of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decay {
    /// It stays at its peak.
    #[default]
    Constant,
    /// Linearly to 0 after [`Schedule::decay_steps`].
    Linear,
    /// Along half a cosine to 0 after [`Schedule::decay_steps`].
    Cosine,
}

impl Decay {
    /// `constant`, `linear` or `cosine`, as the CLI and the checkpoint spell it.
    pub fn name(self) -> &'static str {
        match self {
            Decay::Constant => "constant",
            Decay::Linear => "linear",
            Decay::Cosine => "cosine",
        }
    }

    /// The decay [`Decay::name`] spells `s`.
    ///
    /// ```
    /// use reformc_train::optim::Decay;
    /// assert_eq!(Decay::parse("cosine"), Some(Decay::Cosine));
    /// assert_eq!(Decay::parse("exp"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Decay> {
        [Decay::Constant, Decay::Linear, Decay::Cosine]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

/// What both optimizers do beyond their own rule: the learning rate's decay
/// after warm-up, and clipping the gradients by their global norm (PyTorch's
/// `clip_grad_norm_`, Hugging Face Trainer's `max_grad_norm`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// The decay after warm-up (constant by default).
    pub decay: Decay,
    /// The length of the schedule, warm-up included: a decaying rate is 0
    /// from step `decay_steps + 1` (a run's last step, unless set); unused
    /// with [`Decay::Constant`].
    pub decay_steps: u64,
    /// When set, every step's gradients are scaled by
    /// `min(1, max / (norm + 1e-6))`, `norm` their L2 norm over all weights.
    pub max_grad_norm: Option<f64>,
}

impl Schedule {
    /// The multiplier of the peak learning rate at 1-based step `t`, after
    /// `warmup` steps of linear warm-up (`t / warmup`): 1 at the end of
    /// warm-up, then constant or decaying as Hugging Face's
    /// `get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup`
    /// do after warm-up (step `t` takes the factor of their 0-based step
    /// `t - 1`): the progress `(t - 1 - warmup) / (decay_steps - warmup)`,
    /// so the last step of the schedule still learns and the rate is 0 after it.
    ///
    /// ```
    /// use reformc_train::optim::{Decay, Schedule};
    /// let s = Schedule { decay: Decay::Linear, decay_steps: 10, max_grad_norm: None };
    /// let f = |t| s.lr_factor(2, t);
    /// assert_eq!([f(1), f(2), f(3), f(7), f(10), f(11)], [0.5, 1.0, 1.0, 0.5, 0.125, 0.0]);
    /// let c = Schedule { decay: Decay::Cosine, ..s };
    /// assert!((c.lr_factor(2, 7) - 0.5).abs() < 1e-15 && c.lr_factor(2, 11) == 0.0);
    /// ```
    pub fn lr_factor(&self, warmup: u64, t: u64) -> f64 {
        if warmup > 0 && t < warmup {
            return t as f64 / warmup as f64;
        }
        let span = self.decay_steps.saturating_sub(warmup);
        if self.decay == Decay::Constant || span == 0 {
            return 1.0;
        }
        let p = (t.saturating_sub(1 + warmup) as f64 / span as f64).min(1.0);
        match self.decay {
            Decay::Linear => 1.0 - p,
            _ => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        }
    }

    /// The metadata entries of the schedule (`optimizer.decay`, ...).
    fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            ("decay", self.decay.name().to_string()),
            ("decay_steps", self.decay_steps.to_string()),
            (
                "max_grad_norm",
                self.max_grad_norm.map_or("none".into(), |x| x.to_string()),
            ),
        ]
    }

    /// Reads [`Schedule::metadata`]'s entries through `get`; a checkpoint
    /// written before schedules existed has none: a constant rate, no clipping.
    fn from_metadata(get: impl Fn(&str) -> Option<String>) -> Result<Schedule, String> {
        let bad = |k: &str, v: &str, what: &str| {
            format!("metadata `optimizer.{k}` = `{v}` is not {what}")
        };
        let decay = match get("decay") {
            None => Decay::Constant,
            Some(v) => {
                Decay::parse(&v).ok_or_else(|| bad("decay", &v, "constant, linear or cosine"))?
            }
        };
        let decay_steps = match get("decay_steps") {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| bad("decay_steps", &v, "a step count"))?,
        };
        let max_grad_norm = match get("max_grad_norm").as_deref() {
            None | Some("none") => None,
            Some(v) => Some(v.parse().map_err(|_| bad("max_grad_norm", v, "a number"))?),
        };
        Ok(Schedule {
            decay,
            decay_steps,
            max_grad_norm,
        })
    }
}

/// Adafactor's hyper-parameters (Shazeer & Stern 2018, with the defaults of
/// the Tensor2Tensor and Hugging Face implementations).
#[derive(Clone, Debug, PartialEq)]
pub struct AdafactorConfig {
    /// A fixed learning rate; `None` is the relative step `min(1e-2, 1/√t)`.
    pub lr: Option<f64>,
    /// First-moment decay; `None` (the default) keeps no momentum.
    pub beta1: Option<f64>,
    /// β2 at step t is `1 - t^decay_rate` (-0.8).
    pub decay_rate: f64,
    /// Update clipping threshold d: the update is divided by max(1, RMS/d) (1.0).
    pub clip_threshold: f64,
    /// Added to the squared gradient (1e-30).
    pub eps1: f64,
    /// Floor of the parameter scale max(eps2, RMS(w)) that multiplies the learning rate (1e-3).
    pub eps2: f64,
    /// Decoupled weight decay, scaled by the learning rate (0).
    pub weight_decay: f64,
    /// Steps of linear warm-up that multiply the learning rate (fixed or relative).
    pub warmup: u64,
    /// After warm-up: the decay (of the fixed or relative rate) and gradient clipping.
    pub schedule: Schedule,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        AdafactorConfig {
            lr: None,
            beta1: None,
            decay_rate: -0.8,
            clip_threshold: 1.0,
            eps1: 1e-30,
            eps2: 1e-3,
            weight_decay: 0.0,
            warmup: 0,
            schedule: Schedule::default(),
        }
    }
}

/// Which optimizer, with its hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// Adam.
    Adam(AdamConfig),
    /// Adafactor.
    Adafactor(AdafactorConfig),
}

impl OptimizerConfig {
    /// The learning rate of 1-based step `t`: the peak rate (Adafactor's
    /// fixed one, or its relative step `min(1e-2, 1/√t)`) times the warm-up
    /// and decay factor. Adafactor further scales it per tensor by the
    /// weights' RMS; this is the rate before that.
    ///
    /// ```
    /// use reformc_train::optim::{AdamConfig, Decay, OptimizerConfig, Schedule};
    /// let schedule = Schedule { decay: Decay::Linear, decay_steps: 10, max_grad_norm: None };
    /// let c = OptimizerConfig::Adam(AdamConfig { lr: 0.1, schedule, ..Default::default() });
    /// assert_eq!(c.lr_at(6), 0.1 * 0.5);
    /// ```
    pub fn lr_at(&self, t: u64) -> f64 {
        let (peak, warmup) = match self {
            OptimizerConfig::Adam(c) => (c.lr, c.warmup),
            OptimizerConfig::Adafactor(c) => (
                c.lr.unwrap_or_else(|| (1.0 / (t as f64).sqrt()).min(1e-2)),
                c.warmup,
            ),
        };
        peak * self.schedule().lr_factor(warmup, t)
    }

    /// The decay and clipping both optimizers share.
    pub fn schedule(&self) -> &Schedule {
        match self {
            OptimizerConfig::Adam(c) => &c.schedule,
            OptimizerConfig::Adafactor(c) => &c.schedule,
        }
    }

    /// `adam` or `adafactor`, as the CLI and the checkpoint spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            OptimizerConfig::Adam(_) => "adam",
            OptimizerConfig::Adafactor(_) => "adafactor",
        }
    }

    /// The hyper-parameters as checkpoint metadata: `optimizer` = kind, and
    /// `optimizer.<name>` = value (f64 printed to round-trip exactly; `none`
    /// for an unset option).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let opt = |x: Option<f64>| x.map_or("none".to_string(), |v| v.to_string());
        let mut pairs: Vec<(&str, String)> = match self {
            OptimizerConfig::Adam(c) => vec![
                ("lr", c.lr.to_string()),
                ("beta1", c.beta1.to_string()),
                ("beta2", c.beta2.to_string()),
                ("eps", c.eps.to_string()),
                ("weight_decay", c.weight_decay.to_string()),
                ("warmup", c.warmup.to_string()),
            ],
            OptimizerConfig::Adafactor(c) => vec![
                ("lr", opt(c.lr)),
                ("beta1", opt(c.beta1)),
                ("decay_rate", c.decay_rate.to_string()),
                ("clip_threshold", c.clip_threshold.to_string()),
                ("eps1", c.eps1.to_string()),
                ("eps2", c.eps2.to_string()),
                ("weight_decay", c.weight_decay.to_string()),
                ("warmup", c.warmup.to_string()),
            ],
        };
        pairs.extend(self.schedule().metadata());
        let mut m: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (format!("optimizer.{k}"), v))
            .collect();
        m.insert("optimizer".into(), self.kind().into());
        m
    }

    /// Reads what [`OptimizerConfig::metadata`] wrote.
    ///
    /// ```
    /// use reformc_train::optim::{AdafactorConfig, OptimizerConfig};
    /// let c = OptimizerConfig::Adafactor(AdafactorConfig { lr: Some(0.1), ..Default::default() });
    /// assert_eq!(OptimizerConfig::from_metadata(&c.metadata()).unwrap(), c);
    /// ```
    pub fn from_metadata(m: &BTreeMap<String, String>) -> Result<OptimizerConfig, String> {
        let get = |k: &str| {
            m.get(&format!("optimizer.{k}"))
                .ok_or_else(|| format!("metadata `optimizer.{k}` is missing"))
        };
        let num = |k: &str| -> Result<f64, String> {
            let v = get(k)?;
            v.parse()
                .map_err(|_| format!("metadata `optimizer.{k}` = `{v}` is not a number"))
        };
        let opt = |k: &str| -> Result<Option<f64>, String> {
            if get(k)? == "none" {
                Ok(None)
            } else {
                num(k).map(Some)
            }
        };
        let warmup = || -> Result<u64, String> {
            let v = get("warmup")?;
            v.parse()
                .map_err(|_| format!("metadata `optimizer.warmup` = `{v}` is not a step count"))
        };
        let schedule = || Schedule::from_metadata(|k| m.get(&format!("optimizer.{k}")).cloned());
        match m.get("optimizer").map(String::as_str) {
            Some("adam") => Ok(OptimizerConfig::Adam(AdamConfig {
                lr: num("lr")?,
                beta1: num("beta1")?,
                beta2: num("beta2")?,
                eps: num("eps")?,
                weight_decay: num("weight_decay")?,
                warmup: warmup()?,
                schedule: schedule()?,
            })),
            Some("adafactor") => Ok(OptimizerConfig::Adafactor(AdafactorConfig {
                lr: opt("lr")?,
                beta1: opt("beta1")?,
                decay_rate: num("decay_rate")?,
                clip_threshold: num("clip_threshold")?,
                eps1: num("eps1")?,
                eps2: num("eps2")?,
                weight_decay: num("weight_decay")?,
                warmup: warmup()?,
                schedule: schedule()?,
            })),
            Some(other) => Err(format!(
                "metadata `optimizer` = `{other}` is not adam or adafactor"
            )),
            None => Err("metadata `optimizer` is missing".into()),
        }
    }
}

/// An optimizer and its state: tensors named `<state>.<weight>` (Adam: `m`,
/// `v`; Adafactor: `v_row` and `v_col` for tensors of rank 2 and more,
/// factored over the last two dims as Hugging Face does, `v` for the others,
/// and `m` with momentum).
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    config: OptimizerConfig,
    state: BTreeMap<String, Tensor>,
}

impl Optimizer {
    /// A fresh optimizer (zero state) for `weights`.
    pub fn new(config: OptimizerConfig, weights: &BTreeMap<String, Tensor>) -> Optimizer {
        let mut state = BTreeMap::new();
        for (name, w) in weights {
            for (s, shape) in state_shapes(&config, w.shape()) {
                state.insert(
                    format!("{s}.{name}"),
                    Tensor::F32(ArrayD::zeros(IxDyn(&shape))),
                );
            }
        }
        Optimizer { config, state }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The state tensors by name (`<state>.<weight>`).
    pub fn state(&self) -> &BTreeMap<String, Tensor> {
        &self.state
    }

    /// Replaces the state with `state` (from a checkpoint): the same names,
    /// shapes and dtype (f32) as a fresh optimizer's, or an error naming the first difference.
    pub fn load_state(&mut self, mut state: BTreeMap<String, Tensor>) -> Result<(), String> {
        for (name, fresh) in &self.state {
            let Some(got) = state.get(name) else {
                return Err(format!("optimizer state `{name}` is missing"));
            };
            if got.shape() != fresh.shape() || got.dtype() != fresh.dtype() {
                return Err(format!(
                    "optimizer state `{name}` is {} {:?}, expected f32 {:?}",
                    got.dtype(),
                    got.shape(),
                    fresh.shape()
                ));
            }
        }
        if let Some(extra) = state.keys().find(|k| !self.state.contains_key(*k)) {
            return Err(format!(
                "optimizer state `{extra}` does not belong to a {} optimizer of this model",
                self.config.kind()
            ));
        }
        std::mem::swap(&mut self.state, &mut state);
        Ok(())
    }

    /// Applies the update of 1-based step `t` to every weight, the gradients
    /// first clipped by their global norm when the schedule says so. Returns
    /// that norm (before clipping).
    pub fn update(
        &mut self,
        weights: &mut BTreeMap<String, Tensor>,
        grads: &BTreeMap<String, Tensor>,
        t: u64,
    ) -> Result<f64, String> {
        let norm = global_norm(grads);
        let scale = match self.config.schedule().max_grad_norm {
            Some(max) => (max / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        for (name, w) in weights.iter_mut() {
            let g = grads
                .get(name)
                .ok_or_else(|| format!("the step returned no gradient for `{name}`"))?;
            let (Tensor::F32(w), Tensor::F32(g)) = (w, g) else {
                return Err(format!("`{name}`: weights and gradients must be F32"));
            };
            if w.shape() != g.shape() {
                return Err(format!(
                    "the gradient of `{name}` has shape {:?}, the weight {:?}",
                    g.shape(),
                    w.shape()
                ));
            }
            let g: Vec<f64> = g.iter().map(|&x| f64::from(x) * scale).collect();
            match self.config.clone() {
                OptimizerConfig::Adam(c) => self.adam(&c, name, w, &g, t),
                OptimizerConfig::Adafactor(c) => self.adafactor(&c, name, w, &g, t),
            }
        }
        Ok(norm)
    }

    fn slot(&mut self, s: &str, weight: &str) -> &mut ArrayD<f32> {
        match self.state.get_mut(&format!("{s}.{weight}")) {
            Some(Tensor::F32(a)) => a,
            // `new` made every slot F32 and `load_state` keeps it so.
            _ => unreachable!("optimizer state `{s}.{weight}` exists and is F32"),
        }
    }

    fn adam(&mut self, c: &AdamConfig, name: &str, w: &mut ArrayD<f32>, g: &[f64], t: u64) {
        let lr = c.lr * c.schedule.lr_factor(c.warmup, t);
        let m = ema(self.slot("m", name), g.iter().copied(), c.beta1);
        let v = ema(self.slot("v", name), g.iter().map(|x| x * x), c.beta2);
        let (bc1, bc2) = (1.0 - c.beta1.powf(t as f64), 1.0 - c.beta2.powf(t as f64));
        for ((wi, mi), vi) in w.iter_mut().zip(&m).zip(&v) {
            let x = f64::from(*wi);
            let step = (mi / bc1) / ((vi / bc2).sqrt() + c.eps) + c.weight_decay * x;
            *wi = (x - lr * step) as f32;
        }
    }

    fn adafactor(
        &mut self,
        c: &AdafactorConfig,
        name: &str,
        w: &mut ArrayD<f32>,
        g: &[f64],
        t: u64,
    ) {
        let beta2t = 1.0 - (t as f64).powf(c.decay_rate);
        let sq: Vec<f64> = g.iter().map(|x| x * x + c.eps1).collect();
        let mut u = if w.ndim() >= 2 {
            let (r, cols) = (w.shape()[w.ndim() - 2], w.shape()[w.ndim() - 1]);
            let (row_mean, col_mean) = factored_means(&sq, r, cols);
            let row = ema(self.slot("v_row", name), row_mean.into_iter(), beta2t);
            let col = ema(self.slot("v_col", name), col_mean.into_iter(), beta2t);
            factored_scale(g, &row, &col, r, cols)
        } else {
            let v = ema(self.slot("v", name), sq.into_iter(), beta2t);
            g.iter().zip(&v).map(|(gi, vi)| gi / vi.sqrt()).collect()
        };
        let clip = (rms(&u) / c.clip_threshold).max(1.0);
        let weights: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
        let relative = c.lr.unwrap_or_else(|| (1.0 / (t as f64).sqrt()).min(1e-2));
        let alpha = relative * c.schedule.lr_factor(c.warmup, t) * rms(&weights).max(c.eps2);
        u.iter_mut().for_each(|x| *x *= alpha / clip);
        if let Some(b1) = c.beta1 {
            u = ema(self.slot("m", name), u.into_iter(), b1);
        }
        for ((wi, x), ui) in w.iter_mut().zip(&weights).zip(&u) {
            *wi = (x - c.weight_decay * alpha * x - ui) as f32;
        }
    }
}

/// The state tensors one weight of `shape` needs: (state name, shape).
fn state_shapes(config: &OptimizerConfig, shape: &[usize]) -> Vec<(&'static str, Vec<usize>)> {
    match config {
        OptimizerConfig::Adam(_) => vec![("m", shape.to_vec()), ("v", shape.to_vec())],
        OptimizerConfig::Adafactor(c) => {
            let mut out = if shape.len() >= 2 {
                let n = shape.len();
                let row: Vec<usize> = shape[..n - 1].to_vec();
                let col: Vec<usize> = [&shape[..n - 2], &shape[n - 1..]].concat();
                vec![("v_row", row), ("v_col", col)]
            } else {
                vec![("v", shape.to_vec())]
            };
            if c.beta1.is_some() {
                out.push(("m", shape.to_vec()));
            }
            out
        }
    }
}

/// Updates the running average `s = beta·s + (1-beta)·x` in place (stored as
/// f32) and returns the stored values as f64.
fn ema(s: &mut ArrayD<f32>, x: impl Iterator<Item = f64>, beta: f64) -> Vec<f64> {
    s.iter_mut()
        .zip(x)
        .map(|(si, xi)| {
            *si = (beta * f64::from(*si) + (1.0 - beta) * xi) as f32;
            f64::from(*si)
        })
        .collect()
}

/// The L2 norm of every gradient element together, summed in f64 in name
/// order (so it does not depend on thread counts or map iteration).
fn global_norm(grads: &BTreeMap<String, Tensor>) -> f64 {
    let squares = |g: &Tensor| -> f64 {
        match g {
            Tensor::F32(a) => a.iter().map(|&x| f64::from(x) * f64::from(x)).sum(),
            other => other.to_f64().iter().map(|x| x * x).sum(),
        }
    };
    grads.values().map(squares).sum::<f64>().sqrt()
}

/// Root mean square (0 for an empty slice).
fn rms(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

/// Means of `sq` (row-major `[lead, r, c]`) over its last dim (`[lead, r]`)
/// and over its second-last dim (`[lead, c]`).
fn factored_means(sq: &[f64], r: usize, c: usize) -> (Vec<f64>, Vec<f64>) {
    let lead = sq.len().checked_div(r * c).unwrap_or(0);
    let mut row = vec![0.0; lead * r];
    let mut col = vec![0.0; lead * c];
    for (k, x) in sq.iter().enumerate() {
        let (l, i, j) = (k / (r * c), k / c % r, k % c);
        row[l * r + i] += x / c as f64;
        col[l * c + j] += x / r as f64;
    }
    (row, col)
}

/// g / √v̂ with the factored estimate v̂_ij = row_i·col_j / mean_i(row), per leading index.
fn factored_scale(g: &[f64], row: &[f64], col: &[f64], r: usize, c: usize) -> Vec<f64> {
    let lead = g.len().checked_div(r * c).unwrap_or(0);
    let row_means: Vec<f64> = (0..lead)
        .map(|l| row[l * r..(l + 1) * r].iter().sum::<f64>() / r as f64)
        .collect();
    g.iter()
        .enumerate()
        .map(|(k, gk)| {
            let (l, i, j) = (k / (r * c), k / c % r, k % c);
            let r_factor = (row[l * r + i] / row_means[l]).sqrt().recip();
            let c_factor = col[l * c + j].sqrt().recip();
            gk * r_factor * c_factor
        })
        .collect()
}

#[cfg(test)]
mod tests;
