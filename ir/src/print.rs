//! The text format's printer. [`crate::parse`] reads back what this writes.
//!
//! Values are renumbered in print order, so printing a parsed graph gives
//! the same text byte for byte.

use crate::attr::write_quoted;
use crate::{Graph, Region, ValueId};
use std::collections::HashMap;
use std::fmt::Write;

/// Prints `g` in the text format.
///
/// ```
/// use reformc_ir::{parse, print};
/// let text = "graph {\n  %0 = input {name=\"x\"} : f32[N]\n  %1 = exp %0 : f32[N]\n  output \"y\" = %1\n}\n";
/// assert_eq!(print(&parse(text).unwrap()), text);
/// ```
pub fn print(g: &Graph) -> String {
    let mut p = Printer {
        g,
        names: HashMap::new(),
        out: String::new(),
    };
    p.out.push_str("graph {\n");
    p.block(&g.body, 1);
    for (name, v) in &g.outputs {
        p.indent(1);
        p.out.push_str("output ");
        write_quoted(&mut p.out, name).unwrap();
        let v = p.name(*v);
        writeln!(p.out, " = {v}").unwrap();
    }
    p.out.push_str("}\n");
    p.out
}

struct Printer<'g> {
    g: &'g Graph,
    names: HashMap<ValueId, usize>,
    out: String,
}

impl Printer<'_> {
    fn name(&mut self, v: ValueId) -> String {
        let next = self.names.len();
        let n = *self.names.entry(v).or_insert(next);
        format!("%{n}")
    }

    fn indent(&mut self, depth: usize) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
    }

    fn block(&mut self, block: &[ValueId], depth: usize) {
        for &v in block {
            self.node(v, depth);
        }
    }

    fn node(&mut self, v: ValueId, depth: usize) {
        let node = self.g.node(v);
        self.indent(depth);
        let name = self.name(v);
        write!(self.out, "{name} = {}", node.op.kind.name()).unwrap();
        for (i, input) in node.inputs.iter().enumerate() {
            let s = self.name(*input);
            self.out.push_str(if i == 0 { " " } else { ", " });
            self.out.push_str(&s);
        }
        let op_text = node.op.to_string();
        if let Some(attrs) = op_text.strip_prefix(node.op.kind.name()) {
            self.out.push_str(attrs);
        }
        write!(self.out, " : {}", node.ty).unwrap();
        if node.regions.is_empty() {
            self.out.push('\n');
            return;
        }
        self.out.push_str(" {\n");
        let region_names = node.op.kind.schema().regions;
        for (i, region) in node.regions.iter().enumerate() {
            let label = region_names.get(i).copied().unwrap_or("region");
            self.region(label, region, depth + 1);
        }
        self.indent(depth);
        self.out.push_str("}\n");
    }

    fn region(&mut self, label: &str, r: &Region, depth: usize) {
        self.indent(depth);
        write!(self.out, "{label}(").unwrap();
        for (i, a) in r.args.iter().enumerate() {
            let s = self.name(*a);
            let sep = if i == 0 { "" } else { ", " };
            write!(self.out, "{sep}{s}: {}", self.g.ty(*a)).unwrap();
        }
        self.out.push_str(") {\n");
        self.block(&r.body, depth + 1);
        self.indent(depth + 1);
        self.out.push_str("yield");
        for (i, v) in r.results.iter().enumerate() {
            let s = self.name(*v);
            self.out.push_str(if i == 0 { " " } else { ", " });
            self.out.push_str(&s);
        }
        self.out.push('\n');
        self.indent(depth);
        self.out.push_str("}\n");
    }
}
