//! The activation functions: the one definition of their names (the IR's
//! `linear {activation}` and `act {fn}`) and their ABI codes (the
//! `rc_linear_f32`/`rc_dense_f32` epilogue argument, runtime/ABI.md).
//!
//! The runtime kernels use this enum too (`reformc_runtime::Activation` is a
//! re-export; the kernels add their formulas with the `act::Apply` trait), so
//! the compiler, the interpreter and the runtime agree on every name and code
//! by construction. Adding an activation here is a compile error in every
//! exhaustive `match` over it (interpreter, LLVM scalar code, runtime kernels)
//! until each has a formula.

/// An activation function; the discriminant is its ABI code.
///
/// `None` (code 0) is the identity: a `linear` without an activation.
///
/// ```
/// use reformc_ir::Activation;
/// assert_eq!(Activation::from_name("gelu_new"), Some(Activation::GeluNew));
/// assert_eq!(Activation::GeluNew.name(), Some("gelu_new"));
/// assert_eq!(Activation::GeluNew.code(), 3);
/// assert_eq!(Activation::from_code(2), Some(Activation::Gelu));
/// assert_eq!(Activation::from_code(11), Some(Activation::LeakyRelu));
/// assert_eq!(Activation::from_code(12), None);
/// assert_eq!(Activation::from_name("swish"), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Activation {
    /// 0: the identity (no activation).
    None = 0,
    /// 1: `relu`, max(x, 0).
    Relu = 1,
    /// 2: `gelu`, x·Φ(x) with the exact erf.
    Gelu = 2,
    /// 3: `gelu_new`, the tanh approximation of gelu.
    GeluNew = 3,
    /// 4: `gelu_fast`, HF's faster tanh approximation.
    GeluFast = 4,
    /// 5: `silu`, x·sigmoid(x).
    Silu = 5,
    /// 6: `tanh`.
    Tanh = 6,
    /// 7: `sigmoid`, 1 / (1 + e^-x).
    Sigmoid = 7,
    /// 8: `mish`, x·tanh(softplus(x)) with softplus(x) = ln(1 + e^x)
    /// (PyTorch's `nn.functional.mish`, HF `hidden_act: "mish"`).
    Mish = 8,
    /// 9: `relu6`, min(max(x, 0), 6) (PyTorch's `nn.ReLU6`).
    Relu6 = 9,
    /// 10: `quick_gelu`, x·sigmoid(1.702·x) (HF's `QuickGELUActivation`).
    QuickGelu = 10,
    /// 11: `leaky_relu`, x for x > 0, else 0.01·x (PyTorch's `nn.LeakyReLU`
    /// with its default `negative_slope`, which HF's `ACT2FN` keeps).
    LeakyRelu = 11,
}

impl Activation {
    /// Every activation, in code order (`ALL[c]` has code `c`).
    pub const ALL: [Activation; 12] = [
        Activation::None,
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluNew,
        Activation::GeluFast,
        Activation::Silu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Mish,
        Activation::Relu6,
        Activation::QuickGelu,
        Activation::LeakyRelu,
    ];

    /// The name in the IR's text format; `None` for the identity, which has
    /// no name (a `linear` without the attribute).
    pub const fn name(self) -> Option<&'static str> {
        match self {
            Activation::None => None,
            Activation::Relu => Some("relu"),
            Activation::Gelu => Some("gelu"),
            Activation::GeluNew => Some("gelu_new"),
            Activation::GeluFast => Some("gelu_fast"),
            Activation::Silu => Some("silu"),
            Activation::Tanh => Some("tanh"),
            Activation::Sigmoid => Some("sigmoid"),
            Activation::Mish => Some("mish"),
            Activation::Relu6 => Some("relu6"),
            Activation::QuickGelu => Some("quick_gelu"),
            Activation::LeakyRelu => Some("leaky_relu"),
        }
    }

    /// The activation named `name` in the text format (never the identity).
    pub fn from_name(name: &str) -> Option<Activation> {
        Self::ALL.into_iter().find(|a| a.name() == Some(name))
    }

    /// The slope of [`Activation::LeakyRelu`] below zero: PyTorch's default
    /// `negative_slope`, the value HF's `ACT2FN["leaky_relu"]` uses (it builds
    /// `nn.LeakyReLU()` with no argument).
    pub const LEAKY_RELU_SLOPE: f64 = 0.01;

    /// The upper clamp of [`Activation::Relu6`].
    pub const RELU6_MAX: f64 = 6.0;

    /// The factor inside [`Activation::QuickGelu`]'s sigmoid.
    pub const QUICK_GELU_SCALE: f64 = 1.702;

    /// The ABI code passed to the runtime's linear kernels.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The activation with ABI code `code`.
    pub fn from_code(code: i32) -> Option<Activation> {
        usize::try_from(code)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// The named activations, comma-separated (for error messages).
    ///
    /// ```
    /// assert!(reformc_ir::Activation::names().starts_with("relu, gelu, "));
    /// ```
    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().filter_map(|a| a.name()).collect();
        names.join(", ")
    }

    /// The derivative `act'(x)` in f64. At the kinks it takes PyTorch
    /// autograd's value (`relu'(0) = 0`, `relu6'` is 0 at 0 and at 6,
    /// `leaky_relu'(0)` is the slope); `gelu` is differentiated in its erf
    /// form, `gelu_new` and `gelu_fast` in their tanh forms, the identity has
    /// derivative 1.
    ///
    /// ```
    /// use reformc_ir::Activation;
    /// assert_eq!(Activation::Relu.derivative(0.0), 0.0);
    /// assert_eq!(Activation::Sigmoid.derivative(0.0), 0.25);
    /// assert_eq!(Activation::Gelu.derivative(0.0), 0.5);
    /// ```
    pub fn derivative(self, x: f64) -> f64 {
        use std::f64::consts::{PI, SQRT_2};
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        // d/dx of 0.5 x (1 + tanh(c (x + k x^3))).
        let tanh_gelu = |c: f64| {
            let k = 0.044715;
            let t = (c * (x + k * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * k * x * x)
        };
        match self {
            Activation::None => 1.0,
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            // Φ(x) + x φ(x).
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erf(x / SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * PI).sqrt();
                cdf + x * pdf
            }
            Activation::GeluNew => tanh_gelu((2.0 / PI).sqrt()),
            // `activate` writes gelu_fast as tanh(x c (1 + k x^2)): the same
            // function with its rounded constant.
            Activation::GeluFast => tanh_gelu(0.797_884_560_8),
            Activation::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            Activation::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
            Activation::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            // d/dx x tanh(sp(x)) = tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2).
            Activation::Mish => {
                let t = Activation::softplus(x).tanh();
                t + x * sigmoid(x) * (1.0 - t * t)
            }
            Activation::Relu6 => {
                if x > 0.0 && x < Activation::RELU6_MAX {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::QuickGelu => {
                let k = Activation::QUICK_GELU_SCALE;
                let s = sigmoid(k * x);
                s + k * x * s * (1.0 - s)
            }
            Activation::LeakyRelu => {
                if x > 0.0 {
                    1.0
                } else {
                    Activation::LEAKY_RELU_SLOPE
                }
            }
        }
    }

    /// `ln(1 + e^x)` without overflow.
    ///
    /// ```
    /// assert_eq!(reformc_ir::Activation::softplus(0.0), 2f64.ln());
    /// ```
    pub fn softplus(x: f64) -> f64 {
        x.max(0.0) + (-x.abs()).exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::Activation;

    #[test]
    fn names_and_codes_round_trip() {
        for (i, a) in Activation::ALL.into_iter().enumerate() {
            assert_eq!(a.code(), i as i32);
            assert_eq!(Activation::from_code(a.code()), Some(a));
            match a.name() {
                Some(n) => assert_eq!(Activation::from_name(n), Some(a)),
                None => assert_eq!(a, Activation::None),
            }
        }
        assert_eq!(Activation::from_code(-1), None);
        assert_eq!(Activation::from_code(Activation::ALL.len() as i32), None);
        assert_eq!(Activation::from_name(""), None);
    }
}
