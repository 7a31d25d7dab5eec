//! The `layer` attribute: which model layer an op belongs to.
//!
//! The frontend records `layer = i` on every op (weights included) it emits
//! for layer `i`, so that passes (memory stages, per-layer attention
//! decisions) read the layer instead of parsing it out of weight names. Every
//! op kind accepts it; it never changes what an op computes.

use crate::{Attr, Node, Op};

/// The attribute's name.
pub const LAYER: &str = "layer";

/// The layer `node` belongs to, when it records one.
///
/// ```
/// use reformc_ir::{layer_of, parse};
/// let g = parse("graph {\n  %0 = weight {layer=3, name=\"w\"} : f32[4]\n  output \"w\" = %0\n}\n").unwrap();
/// assert_eq!(layer_of(g.node(g.body[0])), Some(3));
/// ```
pub fn layer_of(node: &Node) -> Option<u64> {
    node.op.layer()
}

impl Op {
    /// The op's `layer` attribute (see [`layer_of`]).
    pub fn layer(&self) -> Option<u64> {
        self.int(LAYER).and_then(|i| u64::try_from(i).ok())
    }

    /// This op with `layer` set to `layer` (or removed when `None`).
    ///
    /// ```
    /// use reformc_ir::{Op, OpKind};
    /// let op = Op::new(OpKind::Exp).with_layer(Some(2));
    /// assert_eq!(op.layer(), Some(2));
    /// assert_eq!(op.with_layer(None).to_string(), "exp");
    /// ```
    pub fn with_layer(mut self, layer: Option<u64>) -> Op {
        match layer {
            Some(i) => {
                let i = i64::try_from(i).unwrap_or(i64::MAX);
                self.attrs.insert(LAYER.into(), Attr::Int(i));
            }
            None => {
                self.attrs.remove(LAYER);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse, print, verify};

    #[test]
    fn every_op_accepts_a_layer_and_it_round_trips() {
        let text = "graph {\n  %0 = input {name=\"x\"} : f32[N,8]\n  %1 = softmax %0 {axis=1, layer=0} : f32[N,8]\n  %2 = exp %1 {layer=7} : f32[N,8]\n  output \"y\" = %2\n}\n";
        let g = parse(text).unwrap();
        verify(&g).unwrap();
        assert_eq!(print(&g), text);
        assert_eq!(g.node(g.body[2]).op.layer(), Some(7));
    }

    #[test]
    fn a_layer_must_be_a_natural_number() {
        for bad in ["layer=-1", "layer=\"3\"", "layer=1.5"] {
            let text = format!("graph {{\n  %0 = input {{name=\"x\"}} : f32[N]\n  %1 = exp %0 {{{bad}}} : f32[N]\n  output \"y\" = %1\n}}\n");
            let e = verify(&parse(&text).unwrap()).unwrap_err().to_string();
            assert!(
                e.contains("attribute `layer` must be an Int >= 0"),
                "{bad}: {e}"
            );
        }
    }
}
