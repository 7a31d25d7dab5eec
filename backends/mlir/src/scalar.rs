//! Scalar code inside `linalg.generic` bodies: element types, constants and
//! the arithmetic of elementwise ops, activations and casts.

use reformc_ir::{Activation, BinaryFn, DType, UnaryFn};

/// The MLIR element type of a dtype.
pub(crate) fn elt(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I64 => "i64",
        DType::I32 => "i32",
        DType::Bool => "i1",
    }
}

/// A scalar literal of type `d` holding `v`: floats as hexadecimal bit
/// patterns, so that every value (inf, NaN, -0.0) is exact.
pub(crate) fn literal(d: DType, v: f64) -> String {
    match d {
        DType::F32 => format!("0x{:08X}", (v as f32).to_bits()),
        DType::F64 => format!("0x{:016X}", v.to_bits()),
        DType::I64 | DType::I32 => format!("{}", v as i64),
        DType::Bool => (if v != 0.0 { "true" } else { "false" }).to_string(),
    }
}

/// The `arith.constant` op holding `v` as a scalar of dtype `d`.
pub(crate) fn constant_op(d: DType, v: f64) -> String {
    match d {
        // `true`/`false` are typed `i1` already; a type after them does not parse.
        DType::Bool => format!("arith.constant {}", literal(d, v)),
        _ => format!("arith.constant {} : {}", literal(d, v), elt(d)),
    }
}

/// Lines of scalar SSA code, with fresh names from a shared counter.
pub(crate) struct Body<'a> {
    pub(crate) lines: &'a mut Vec<String>,
    pub(crate) counter: &'a mut usize,
    pub(crate) indent: &'a str,
}

impl Body<'_> {
    /// A fresh SSA name, for results of ops with regions written by
    /// [`Self::line`].
    pub(crate) fn fresh(&mut self) -> String {
        let name = format!("%t{}", *self.counter);
        *self.counter += 1;
        name
    }

    /// Emits one line as it is (indented).
    pub(crate) fn line(&mut self, text: String) {
        self.lines.push(format!("{}{text}", self.indent));
    }

    /// Emits `%tN = rhs` and returns `%tN`.
    pub(crate) fn def(&mut self, rhs: String) -> String {
        let name = self.fresh();
        self.lines.push(format!("{}{name} = {rhs}", self.indent));
        name
    }

    /// A constant of dtype `d`.
    pub(crate) fn constant(&mut self, d: DType, v: f64) -> String {
        self.def(constant_op(d, v))
    }

    /// `exp(x)` for f32 `x` in arith ops only (no call), so that loop
    /// vectorisers take the loop around it: `x = n ln 2 + r` with `n` the
    /// nearest integer to `x / ln 2` and `ln 2` split in two (Cody-Waite),
    /// `exp(r)` by Cephes' degree-7 polynomial on `|r| <= ln 2 / 2`, times
    /// `2^n` built in the exponent bits. Within 2 ulp of the correctly
    /// rounded value; `x < -104` (a masked logit) gives 0, `x > 88.7` infinity,
    /// NaN stays NaN. reformc's own pipeline uses it for the softmax of the
    /// attention kernels (the module users get keeps `math.exp`).
    pub(crate) fn exp_f32_poly(&mut self, x: &str) -> String {
        let c = |b: &mut Self, v: f64| b.def(format!("arith.constant {v:.9e} : f32"));
        let (lo, hi) = (c(self, -87.33654), c(self, 88.72284));
        let floor = c(self, -104.0);
        let under = self.def(format!("arith.cmpf olt, {x}, {floor} : f32"));
        let below = self.def(format!("arith.cmpf olt, {x}, {lo} : f32"));
        let xc = self.def(format!("arith.select {below}, {lo}, {x} : f32"));
        let above = self.def(format!("arith.cmpf ogt, {xc}, {hi} : f32"));
        let xc = self.def(format!("arith.select {above}, {hi}, {xc} : f32"));
        let log2e = c(self, std::f64::consts::LOG2_E);
        let half = c(self, 0.5);
        let t = self.def(format!("arith.mulf {xc}, {log2e} : f32"));
        let t = self.def(format!("arith.addf {t}, {half} : f32"));
        let n = self.def(format!("math.floor {t} : f32"));
        let (ln2_hi, ln2_lo) = (c(self, 0.693359375), c(self, -2.12194440e-4));
        let r = self.def(format!("arith.mulf {n}, {ln2_hi} : f32"));
        let r = self.def(format!("arith.subf {xc}, {r} : f32"));
        let r2 = self.def(format!("arith.mulf {n}, {ln2_lo} : f32"));
        let r = self.def(format!("arith.subf {r}, {r2} : f32"));
        let mut p = c(self, 1.9875691500e-4);
        for k in [
            1.3981999507e-3,
            8.3334519073e-3,
            4.1665795894e-2,
            1.6666665459e-1,
            5.0000001201e-1,
        ] {
            let m = self.def(format!("arith.mulf {p}, {r} : f32"));
            let k = c(self, k);
            p = self.def(format!("arith.addf {m}, {k} : f32"));
        }
        let rr = self.def(format!("arith.mulf {r}, {r} : f32"));
        let p = self.def(format!("arith.mulf {p}, {rr} : f32"));
        let p = self.def(format!("arith.addf {p}, {r} : f32"));
        let one = c(self, 1.0);
        let p = self.def(format!("arith.addf {p}, {one} : f32"));
        // 2^n as 2^(n >> 1) 2^(n - (n >> 1)), each through the exponent field:
        // n is in [-126, 128], where 2^n itself may not be a normal f32.
        let ni = self.def(format!("arith.fptosi {n} : f32 to i32"));
        let one_i = self.def("arith.constant 1 : i32".to_string());
        let n1 = self.def(format!("arith.shrsi {ni}, {one_i} : i32"));
        let n2 = self.def(format!("arith.subi {ni}, {n1} : i32"));
        let mut y = p;
        for k in [n1, n2] {
            let bias = self.def("arith.constant 127 : i32".to_string());
            let e = self.def(format!("arith.addi {k}, {bias} : i32"));
            let sh = self.def("arith.constant 23 : i32".to_string());
            let e = self.def(format!("arith.shli {e}, {sh} : i32"));
            let scale = self.def(format!("arith.bitcast {e} : i32 to f32"));
            y = self.def(format!("arith.mulf {y}, {scale} : f32"));
        }
        let inf = self.def("arith.constant 0x7F800000 : f32".to_string());
        let y = self.def(format!("arith.select {above}, {inf}, {y} : f32"));
        let zero = c(self, 0.0);
        self.def(format!("arith.select {under}, {zero}, {y} : f32"))
    }

    fn bin(&mut self, op: &str, a: &str, b: &str, d: DType) -> String {
        self.def(format!("{op} {a}, {b} : {}", elt(d)))
    }

    /// `f(a, b)` for operands of dtype `d`.
    pub(crate) fn binary(&mut self, f: BinaryFn, a: &str, b: &str, d: DType) -> String {
        let float = d.is_float();
        let op = match (f, float) {
            (BinaryFn::Add, true) => "arith.addf",
            (BinaryFn::Add, false) => "arith.addi",
            (BinaryFn::Sub, true) => "arith.subf",
            (BinaryFn::Sub, false) => "arith.subi",
            (BinaryFn::Mul, true) => "arith.mulf",
            (BinaryFn::Mul, false) => "arith.muli",
            (BinaryFn::Div, true) => "arith.divf",
            (BinaryFn::Div, false) => "arith.divsi",
            (BinaryFn::Max, true) => "arith.maximumf",
            (BinaryFn::Max, false) => "arith.maxsi",
            (BinaryFn::Min, true) => "arith.minimumf",
            (BinaryFn::Min, false) => "arith.minsi",
            (BinaryFn::Lt, true) => "arith.cmpf olt,",
            (BinaryFn::Lt, false) => "arith.cmpi slt,",
            (BinaryFn::Eq, true) => "arith.cmpf oeq,",
            (BinaryFn::Eq, false) => "arith.cmpi eq,",
        };
        self.bin(op, a, b, d)
    }

    /// `f(x)` for an operand of dtype `d`; `act` is the activation of an `act` op.
    pub(crate) fn unary(&mut self, f: UnaryFn, act: Activation, x: &str, d: DType) -> String {
        let t = elt(d);
        match f {
            UnaryFn::Neg if d.is_float() => self.def(format!("arith.negf {x} : {t}")),
            UnaryFn::Neg => {
                let zero = self.constant(d, 0.0);
                self.bin("arith.subi", &zero, x, d)
            }
            UnaryFn::Exp => self.def(format!("math.exp {x} : {t}")),
            UnaryFn::Log => self.def(format!("math.log {x} : {t}")),
            UnaryFn::Sqrt => self.def(format!("math.sqrt {x} : {t}")),
            UnaryFn::Rsqrt => self.def(format!("math.rsqrt {x} : {t}")),
            UnaryFn::Tanh => self.def(format!("math.tanh {x} : {t}")),
            UnaryFn::Act => self.activation(act, x, d),
        }
    }

    /// `1 + tanh(x)` times `0.5 * v`: the common tail of the tanh gelus.
    fn half_times_one_plus(&mut self, v: &str, inner: &str, d: DType) -> String {
        let one = self.constant(d, 1.0);
        let half = self.constant(d, 0.5);
        let s = self.bin("arith.addf", &one, inner, d);
        let hv = self.bin("arith.mulf", &half, v, d);
        self.bin("arith.mulf", &hv, &s, d)
    }

    /// `1 / (1 + e^-x)`.
    fn sigmoid(&mut self, x: &str, d: DType) -> String {
        let t = elt(d);
        let one = self.constant(d, 1.0);
        let n = self.def(format!("arith.negf {x} : {t}"));
        let e = self.def(format!("math.exp {n} : {t}"));
        let den = self.bin("arith.addf", &one, &e, d);
        self.bin("arith.divf", &one, &den, d)
    }

    /// The activation `f` of a float `x`, with the interpreter's formulas.
    pub(crate) fn activation(&mut self, f: Activation, x: &str, d: DType) -> String {
        let t = elt(d);
        match f {
            Activation::None => x.to_string(),
            Activation::Relu => {
                let zero = self.constant(d, 0.0);
                let gt = self.def(format!("arith.cmpf ogt, {x}, {zero} : {t}"));
                self.def(format!("arith.select {gt}, {x}, {zero} : {t}"))
            }
            Activation::Gelu => {
                let r = self.constant(d, std::f64::consts::FRAC_1_SQRT_2);
                let s = self.bin("arith.mulf", x, &r, d);
                let e = self.def(format!("math.erf {s} : {t}"));
                self.half_times_one_plus(x, &e, d)
            }
            Activation::GeluNew => {
                let c = self.constant(d, (2.0 / std::f64::consts::PI).sqrt());
                let k = self.constant(d, 0.044715);
                let x2 = self.bin("arith.mulf", x, x, d);
                let x3 = self.bin("arith.mulf", &x2, x, d);
                let kx3 = self.bin("arith.mulf", &k, &x3, d);
                let s = self.bin("arith.addf", x, &kx3, d);
                let a = self.bin("arith.mulf", &c, &s, d);
                let th = self.def(format!("math.tanh {a} : {t}"));
                self.half_times_one_plus(x, &th, d)
            }
            Activation::GeluFast => {
                let c = self.constant(d, 0.797_884_560_8);
                let k = self.constant(d, 0.044715);
                let one = self.constant(d, 1.0);
                let x2 = self.bin("arith.mulf", x, x, d);
                let kx2 = self.bin("arith.mulf", &k, &x2, d);
                let p = self.bin("arith.addf", &one, &kx2, d);
                let xc = self.bin("arith.mulf", x, &c, d);
                let a = self.bin("arith.mulf", &xc, &p, d);
                let th = self.def(format!("math.tanh {a} : {t}"));
                self.half_times_one_plus(x, &th, d)
            }
            Activation::Silu => {
                let s = self.sigmoid(x, d);
                self.bin("arith.mulf", x, &s, d)
            }
            Activation::Tanh => self.def(format!("math.tanh {x} : {t}")),
            Activation::Sigmoid => self.sigmoid(x, d),
            Activation::Mish => {
                let sp = self.softplus(x, d);
                let th = self.def(format!("math.tanh {sp} : {t}"));
                self.bin("arith.mulf", x, &th, d)
            }
            Activation::Relu6 => {
                // x > 6 ? 6 : (x > 0 ? x : 0), the interpreter's order.
                let zero = self.constant(d, 0.0);
                let top = self.constant(d, Activation::RELU6_MAX);
                let gt = self.def(format!("arith.cmpf ogt, {x}, {zero} : {t}"));
                let r = self.def(format!("arith.select {gt}, {x}, {zero} : {t}"));
                let over = self.def(format!("arith.cmpf ogt, {x}, {top} : {t}"));
                self.def(format!("arith.select {over}, {top}, {r} : {t}"))
            }
            Activation::QuickGelu => {
                let k = self.constant(d, Activation::QUICK_GELU_SCALE);
                let kx = self.bin("arith.mulf", &k, x, d);
                let s = self.sigmoid(&kx, d);
                self.bin("arith.mulf", x, &s, d)
            }
            Activation::LeakyRelu => {
                let zero = self.constant(d, 0.0);
                let slope = self.constant(d, Activation::LEAKY_RELU_SLOPE);
                let gt = self.def(format!("arith.cmpf ogt, {x}, {zero} : {t}"));
                let neg = self.bin("arith.mulf", x, &slope, d);
                self.def(format!("arith.select {gt}, {x}, {neg} : {t}"))
            }
        }
    }

    /// `softplus(x) = max(x, 0) + log(1 + e^-|x|)`: no overflow. `math.log`
    /// of `1 + e` rather than `math.log1p`, which not every pipeline lowers;
    /// the absolute error stays at one rounding of a value at most ln 2.
    fn softplus(&mut self, x: &str, d: DType) -> String {
        let t = elt(d);
        let zero = self.constant(d, 0.0);
        let one = self.constant(d, 1.0);
        let gt = self.def(format!("arith.cmpf ogt, {x}, {zero} : {t}"));
        let relu = self.def(format!("arith.select {gt}, {x}, {zero} : {t}"));
        let abs = self.def(format!("math.absf {x} : {t}"));
        let n = self.def(format!("arith.negf {abs} : {t}"));
        let e = self.def(format!("math.exp {n} : {t}"));
        let onep = self.bin("arith.addf", &one, &e, d);
        let l = self.def(format!("math.log {onep} : {t}"));
        self.bin("arith.addf", &relu, &l, d)
    }

    /// `dy * act'(x)` for float `x` and `dy` of dtype `d` (`act_grad`), with
    /// the interpreter's derivative formulas (`nn::activate_grad`).
    pub(crate) fn act_grad(&mut self, f: Activation, x: &str, dy: &str, d: DType) -> String {
        let deriv = self.act_derivative(f, x, d);
        self.bin("arith.mulf", dy, &deriv, d)
    }

    /// `act'(x)`: relu'(0) = 0; gelu in its erf form; gelu_new and
    /// gelu_fast in their tanh forms.
    fn act_derivative(&mut self, f: Activation, x: &str, d: DType) -> String {
        let t = elt(d);
        match f {
            Activation::None => self.constant(d, 1.0),
            Activation::Relu => {
                let (zero, one) = (self.constant(d, 0.0), self.constant(d, 1.0));
                let gt = self.def(format!("arith.cmpf ogt, {x}, {zero} : {t}"));
                self.def(format!("arith.select {gt}, {one}, {zero} : {t}"))
            }
            // Φ(x) + x φ(x).
            Activation::Gelu => {
                let r = self.constant(d, std::f64::consts::FRAC_1_SQRT_2);
                let s = self.bin("arith.mulf", x, &r, d);
                let e = self.def(format!("math.erf {s} : {t}"));
                let cdf = self.half_times_one_plus_value(&e, d);
                let mhalf = self.constant(d, -0.5);
                let hx = self.bin("arith.mulf", &mhalf, x, d);
                let q = self.bin("arith.mulf", &hx, x, d);
                let g = self.def(format!("math.exp {q} : {t}"));
                let inv = self.constant(d, 1.0 / (2.0 * std::f64::consts::PI).sqrt());
                let pdf = self.bin("arith.mulf", &g, &inv, d);
                let xpdf = self.bin("arith.mulf", x, &pdf, d);
                self.bin("arith.addf", &cdf, &xpdf, d)
            }
            Activation::GeluNew => {
                self.tanh_gelu_derivative(x, (2.0 / std::f64::consts::PI).sqrt(), d)
            }
            Activation::GeluFast => self.tanh_gelu_derivative(x, 0.797_884_560_8, d),
            Activation::Silu => {
                let s = self.sigmoid(x, d);
                let one = self.constant(d, 1.0);
                let oms = self.bin("arith.subf", &one, &s, d);
                let xo = self.bin("arith.mulf", x, &oms, d);
                let p = self.bin("arith.addf", &one, &xo, d);
                self.bin("arith.mulf", &s, &p, d)
            }
            Activation::Tanh => {
                let th = self.def(format!("math.tanh {x} : {t}"));
                self.one_minus_square(&th, d)
            }
            Activation::Sigmoid => {
                let s = self.sigmoid(x, d);
                let one = self.constant(d, 1.0);
                let oms = self.bin("arith.subf", &one, &s, d);
                self.bin("arith.mulf", &s, &oms, d)
            }
            // tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2).
            Activation::Mish => {
                let sp = self.softplus(x, d);
                let th = self.def(format!("math.tanh {sp} : {t}"));
                let sech2 = self.one_minus_square(&th, d);
                let s = self.sigmoid(x, d);
                let xs = self.bin("arith.mulf", x, &s, d);
                let r = self.bin("arith.mulf", &xs, &sech2, d);
                self.bin("arith.addf", &th, &r, d)
            }
            // 1 inside (0, 6), else 0 (PyTorch's hardtanh backward).
            Activation::Relu6 => {
                let (zero, one) = (self.constant(d, 0.0), self.constant(d, 1.0));
                let top = self.constant(d, Activation::RELU6_MAX);
                let gt = self.def(format!("arith.cmpf ogt, {x}, {zero} : {t}"));
                let lt = self.def(format!("arith.cmpf olt, {x}, {top} : {t}"));
                let inside = self.def(format!("arith.andi {gt}, {lt} : i1"));
                self.def(format!("arith.select {inside}, {one}, {zero} : {t}"))
            }
            // s + k x s (1 - s) with s = sigmoid(k x).
            Activation::QuickGelu => {
                let k = self.constant(d, Activation::QUICK_GELU_SCALE);
                let kx = self.bin("arith.mulf", &k, x, d);
                let s = self.sigmoid(&kx, d);
                let one = self.constant(d, 1.0);
                let oms = self.bin("arith.subf", &one, &s, d);
                let kxs = self.bin("arith.mulf", &kx, &s, d);
                let r = self.bin("arith.mulf", &kxs, &oms, d);
                self.bin("arith.addf", &s, &r, d)
            }
            Activation::LeakyRelu => {
                let zero = self.constant(d, 0.0);
                let one = self.constant(d, 1.0);
                let slope = self.constant(d, Activation::LEAKY_RELU_SLOPE);
                let gt = self.def(format!("arith.cmpf ogt, {x}, {zero} : {t}"));
                self.def(format!("arith.select {gt}, {one}, {slope} : {t}"))
            }
        }
    }

    /// `0.5 (1 + v)`.
    fn half_times_one_plus_value(&mut self, v: &str, d: DType) -> String {
        let (one, half) = (self.constant(d, 1.0), self.constant(d, 0.5));
        let s = self.bin("arith.addf", &one, v, d);
        self.bin("arith.mulf", &half, &s, d)
    }

    /// `1 - v^2`.
    fn one_minus_square(&mut self, v: &str, d: DType) -> String {
        let one = self.constant(d, 1.0);
        let sq = self.bin("arith.mulf", v, v, d);
        self.bin("arith.subf", &one, &sq, d)
    }

    /// d/dx of `0.5 x (1 + tanh(c (x + 0.044715 x^3)))`:
    /// `0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)`.
    fn tanh_gelu_derivative(&mut self, x: &str, c: f64, d: DType) -> String {
        let t = elt(d);
        let (k, cc) = (self.constant(d, 0.044715), self.constant(d, c));
        let kx = self.bin("arith.mulf", &k, x, d);
        let kx2 = self.bin("arith.mulf", &kx, x, d);
        let kx3 = self.bin("arith.mulf", &kx2, x, d);
        let inner = self.bin("arith.addf", x, &kx3, d);
        let arg = self.bin("arith.mulf", &cc, &inner, d);
        let th = self.def(format!("math.tanh {arg} : {t}"));
        let left = self.half_times_one_plus_value(&th, d);
        let sech2 = self.one_minus_square(&th, d);
        let (half, one) = (self.constant(d, 0.5), self.constant(d, 1.0));
        let k3 = self.constant(d, 3.0 * 0.044715);
        let hx = self.bin("arith.mulf", &half, x, d);
        let a = self.bin("arith.mulf", &hx, &sech2, d);
        let b = self.bin("arith.mulf", &a, &cc, d);
        let k3x = self.bin("arith.mulf", &k3, x, d);
        let k3x2 = self.bin("arith.mulf", &k3x, x, d);
        let poly = self.bin("arith.addf", &one, &k3x2, d);
        let right = self.bin("arith.mulf", &b, &poly, d);
        // Where tanh saturates the right term is 0, also when x^2 overflowed
        // the element type (0 * inf would be NaN; the f64 interpreter gives 0).
        let zero = self.constant(d, 0.0);
        let flat = self.def(format!("arith.cmpf oeq, {sech2}, {zero} : {t}"));
        let right = self.def(format!("arith.select {flat}, {zero}, {right} : {t}"));
        self.bin("arith.addf", &left, &right, d)
    }

    /// `x` of dtype `from` converted to `to` (numpy `astype`).
    pub(crate) fn cast(&mut self, x: &str, from: DType, to: DType) -> String {
        let (a, b) = (elt(from), elt(to));
        if from == to {
            return x.to_string();
        }
        if to == DType::Bool {
            let zero = self.constant(from, 0.0);
            return if from.is_float() {
                self.def(format!("arith.cmpf une, {x}, {zero} : {a}"))
            } else {
                self.def(format!("arith.cmpi ne, {x}, {zero} : {a}"))
            };
        }
        let op = match (from.is_float(), to.is_float()) {
            (true, true) if width(from) < width(to) => "arith.extf",
            (true, true) => "arith.truncf",
            (true, false) => "arith.fptosi",
            (false, true) if from == DType::Bool => "arith.uitofp",
            (false, true) => "arith.sitofp",
            (false, false) if from == DType::Bool => "arith.extui",
            (false, false) if width(from) < width(to) => "arith.extsi",
            (false, false) => "arith.trunci",
        };
        self.def(format!("{op} {x} : {a} to {b}"))
    }
}

/// Bits of a dtype's element.
fn width(d: DType) -> u32 {
    match d {
        DType::F64 | DType::I64 => 64,
        DType::F32 | DType::I32 => 32,
        DType::Bool => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::Body;
    use reformc_ir::DType;
    use reformc_tensor::Tensor;

    /// `exp_f32_poly` on the JIT against f64's `exp`: within 2 ulp where the
    /// result is a normal f32, 0 below -104, infinity above 88.73, NaN kept.
    #[test]
    fn polynomial_exp_is_within_two_ulp() {
        let mut xs: Vec<f32> = vec![
            f32::NEG_INFINITY,
            -1e9,
            -104.5,
            -103.9,
            -90.0,
            -87.3,
            -20.0,
            -1.0,
            -1e-8,
            0.0,
            1e-8,
            0.3,
            0.5,
            1.0,
            10.0,
            50.0,
            88.7,
            88.8,
            100.0,
            f32::INFINITY,
            f32::NAN,
        ];
        xs.extend((0..2000).map(|i| -87.0 + 175.0 * i as f32 / 1999.0));
        let (mut lines, mut counter) = (Vec::new(), 0usize);
        let mut b = Body {
            lines: &mut lines,
            counter: &mut counter,
            indent: "      ",
        };
        let y = b.exp_f32_poly("%a");
        let body = lines.join("\n");
        let text = format!(
            "module {{\n  func.func @forward(%x: tensor<?xf32>) -> tensor<?xf32> attributes {{llvm.emit_c_interface}} {{\n    %c0 = arith.constant 0 : index\n    %n = tensor.dim %x, %c0 : tensor<?xf32>\n    %e = tensor.empty(%n) : tensor<?xf32>\n    %r = linalg.generic {{indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> (d0)>], iterator_types = [\"parallel\"]}} ins(%x : tensor<?xf32>) outs(%e : tensor<?xf32>) {{\n    ^bb0(%a: f32, %o: f32):\n{body}\n      linalg.yield {y} : f32\n    }} -> tensor<?xf32>\n    return %r : tensor<?xf32>\n  }}\n}}\n"
        );
        let x = Tensor::F32(ndarray::Array1::from(xs.clone()).into_dyn());
        let (outs, _) = crate::jit::run_text(
            &text,
            &[&[x]],
            &[(DType::F32, 1)],
            false,
            None,
            std::time::Instant::now(),
        )
        .unwrap();
        let Tensor::F32(got) = &outs[0][0] else {
            panic!("f32 result")
        };
        for (&x, &g) in xs.iter().zip(got.iter()) {
            let want = (x as f64).exp();
            if x.is_nan() {
                assert!(g.is_nan());
            } else if x < -104.0 {
                assert_eq!(g, 0.0, "exp({x})");
            } else if want > f32::MAX as f64 {
                assert_eq!(g, f32::INFINITY, "exp({x})");
            } else if want >= f32::MIN_POSITIVE as f64 {
                let ulp = (want as f32).to_bits().abs_diff(g.to_bits());
                assert!(ulp <= 2, "exp({x}) = {g}, want {want} ({ulp} ulp)");
            } else {
                // Below f32's normal range: tiny, never negative.
                assert!((0.0..1e-37).contains(&g), "exp({x}) = {g}");
            }
        }
    }
}
