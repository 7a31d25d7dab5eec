//! The text format's parser: the inverse of [`crate::print`].

use crate::attr::{Attr, Attrs};
use crate::{DType, Dim, Graph, Node, Op, OpKind, Region, TensorType, ValueId};
use std::collections::HashMap;
use std::fmt;

/// Deepest region nesting the parser accepts (the frontend emits 2).
const MAX_REGION_DEPTH: usize = 64;

/// A parse error with its 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the offending token.
    pub line: usize,
    /// 1-based column (in characters) of the offending token.
    pub col: usize,
    /// What was wrong, e.g. what was expected and what was found.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses the text format into a graph. The result is not verified: call
/// [`crate::verify`] for shape and dominance checks.
///
/// ```
/// let g = reformc_ir::parse("graph {\n %a = input {name=\"x\"} : f32[N]\n output \"x\" = %a\n}").unwrap();
/// assert_eq!(g.outputs.len(), 1);
/// assert!(reformc_ir::parse("graph { %a = frobnicate : f32[] }").unwrap_err().message.contains("unknown op"));
/// ```
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let tokens = lex(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        g: Graph::new(),
        scopes: vec![HashMap::new()],
    };
    p.graph()?;
    Ok(p.g)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Value(String),
    Number(String),
    Str(String),
    Punct(char),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) | Tok::Number(s) => write!(f, "`{s}`"),
            Tok::Value(s) => write!(f, "`%{s}`"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Punct(c) => write!(f, "`{c}`"),
            Tok::Eof => f.write_str("end of input"),
        }
    }
}

struct Token {
    tok: Tok,
    line: usize,
    col: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0, 1, 1);
    let err = |line, col, message: String| ParseError { line, col, message };
    while i < chars.len() {
        let c = chars[i];
        let (tl, tc) = (line, col);
        let start = i;
        let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        if c == '\n' {
            i += 1;
            line += 1;
            col = 1;
            continue;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '%' {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            if i == start + 1 {
                return Err(err(tl, tc, "expected a value name after `%`".into()));
            }
            out.push(Token {
                tok: Tok::Value(chars[start + 1..i].iter().collect()),
                line: tl,
                col: tc,
            });
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None | Some('\n') => return Err(err(tl, tc, "unterminated string".into())),
                    Some('"') => break,
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some('n') => s.push('\n'),
                            Some(&e @ ('"' | '\\')) => s.push(e),
                            _ => {
                                return Err(err(
                                    tl,
                                    tc,
                                    "bad escape in string (allowed: \\\" \\\\ \\n)".into(),
                                ))
                            }
                        }
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            out.push(Token {
                tok: Tok::Str(s),
                line: tl,
                col: tc,
            });
        } else if c.is_ascii_digit()
            || (c == '-'
                && chars
                    .get(i + 1)
                    .is_some_and(|d| d.is_ascii_digit() || *d == 'i'))
        {
            i += 1;
            while i < chars.len()
                && (is_word(chars[i])
                    || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Number(chars[start..i].iter().collect()),
                line: tl,
                col: tc,
            });
        } else if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(chars[start..i].iter().collect()),
                line: tl,
                col: tc,
            });
        } else if "={}()[],:".contains(c) {
            i += 1;
            out.push(Token {
                tok: Tok::Punct(c),
                line: tl,
                col: tc,
            });
        } else {
            return Err(err(tl, tc, format!("unexpected character `{c}`")));
        }
        col += i - start;
    }
    out.push(Token {
        tok: Tok::Eof,
        line,
        col,
    });
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    g: Graph,
    /// Visible value names, innermost scope last.
    scopes: Vec<HashMap<String, ValueId>>,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }

    fn next(&mut self) -> Tok {
        let t = self.tokens[self.pos].tok.clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        let t = &self.tokens[self.pos];
        Err(ParseError {
            line: t.line,
            col: t.col,
            message: message.into(),
        })
    }

    fn expect_punct(&mut self, c: char) -> Result<(), ParseError> {
        if *self.peek() == Tok::Punct(c) {
            self.next();
            Ok(())
        } else {
            self.error(format!("expected `{c}`, found {}", self.peek()))
        }
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.next();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.next();
                Ok(s)
            }
            t => self.error(format!("expected a name, found {t}")),
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        match self.peek() {
            Tok::Ident(s) if s == kw => {
                self.next();
                Ok(())
            }
            t => self.error(format!("expected `{kw}`, found {t}")),
        }
    }

    fn lookup(&self, name: &str) -> Option<ValueId> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    fn use_value(&mut self) -> Result<ValueId, ParseError> {
        match self.peek().clone() {
            Tok::Value(name) => match self.lookup(&name) {
                Some(v) => {
                    self.next();
                    Ok(v)
                }
                None => self.error(format!("use of undefined value `%{name}`")),
            },
            t => self.error(format!("expected a value like `%3`, found {t}")),
        }
    }

    fn define(&mut self, name: String, v: ValueId) -> Result<(), ParseError> {
        if self.lookup(&name).is_some() {
            return self.error(format!("value `%{name}` is defined twice"));
        }
        self.scopes.last_mut().expect("scope").insert(name, v);
        Ok(())
    }

    fn graph(&mut self) -> Result<(), ParseError> {
        self.keyword("graph")?;
        self.expect_punct('{')?;
        loop {
            match self.peek().clone() {
                Tok::Punct('}') => {
                    self.next();
                    break;
                }
                Tok::Ident(kw) if kw == "output" => {
                    self.next();
                    let name = match self.next() {
                        Tok::Str(s) => s,
                        t => {
                            return self.error(format!(
                                "expected the output's name as a string, found {t}"
                            ))
                        }
                    };
                    self.expect_punct('=')?;
                    let v = self.use_value()?;
                    if self.g.outputs.iter().any(|(n, _)| *n == name) {
                        return self.error(format!("output \"{name}\" is defined twice"));
                    }
                    self.g.outputs.push((name, v));
                }
                Tok::Value(_) => {
                    let (name, node) = self.op_line()?;
                    let v = self.g.add_node(node);
                    self.define(name, v)?;
                }
                t => {
                    return self.error(format!(
                        "expected an op (`%N = ...`), `output` or `}}`, found {t}"
                    ))
                }
            }
        }
        match self.peek() {
            Tok::Eof => Ok(()),
            t => self.error(format!("unexpected {t} after the graph")),
        }
    }

    /// `%N = kind %a, %b {attrs} : type [{ regions }]`
    fn op_line(&mut self) -> Result<(String, Node), ParseError> {
        let name = match self.next() {
            Tok::Value(n) => n,
            _ => unreachable!("op_line starts at a value token"),
        };
        self.expect_punct('=')?;
        let kind_name = self.ident()?;
        let kind = match OpKind::from_name(&kind_name) {
            Some(OpKind::Arg) | None => {
                self.pos -= 1;
                return self.error(format!("unknown op `{kind_name}`"));
            }
            Some(k) => k,
        };
        let mut inputs = Vec::new();
        if matches!(self.peek(), Tok::Value(_)) {
            inputs.push(self.use_value()?);
            while self.eat_punct(',') {
                inputs.push(self.use_value()?);
            }
        }
        let attrs = if *self.peek() == Tok::Punct('{') {
            self.attrs()?
        } else {
            Attrs::new()
        };
        self.expect_punct(':')?;
        let ty = self.tensor_type()?;
        let mut regions = Vec::new();
        if self.eat_punct('{') {
            while !self.eat_punct('}') {
                regions.push(self.region()?);
            }
        }
        Ok((
            name,
            Node {
                op: Op { kind, attrs },
                inputs,
                ty,
                regions,
            },
        ))
    }

    fn region(&mut self) -> Result<Region, ParseError> {
        // Regions parse recursively: a hostile nesting depth would overflow the stack.
        if self.scopes.len() > MAX_REGION_DEPTH {
            return self.error(format!(
                "regions nested deeper than {MAX_REGION_DEPTH} levels"
            ));
        }
        self.ident()?;
        self.expect_punct('(')?;
        let mut arg_names = Vec::new();
        let mut arg_types = Vec::new();
        if !self.eat_punct(')') {
            loop {
                match self.next() {
                    Tok::Value(n) => arg_names.push(n),
                    t => {
                        return self
                            .error(format!("expected a region argument like `%3`, found {t}"))
                    }
                }
                self.expect_punct(':')?;
                arg_types.push(self.tensor_type()?);
                if self.eat_punct(')') {
                    break;
                }
                self.expect_punct(',')?;
            }
        }
        self.expect_punct('{')?;
        let args = self.g.begin_region(&arg_types);
        self.scopes.push(HashMap::new());
        for (n, a) in arg_names.into_iter().zip(&args) {
            self.define(n, *a)?;
        }
        loop {
            match self.peek().clone() {
                Tok::Ident(kw) if kw == "yield" => {
                    self.next();
                    break;
                }
                Tok::Value(_) => {
                    let (name, node) = self.op_line()?;
                    let v = self.g.add_node(node);
                    self.define(name, v)?;
                }
                t => {
                    return self.error(format!(
                        "expected an op or `yield` in the region, found {t}"
                    ))
                }
            }
        }
        let mut results = vec![self.use_value()?];
        while self.eat_punct(',') {
            results.push(self.use_value()?);
        }
        self.expect_punct('}')?;
        self.scopes.pop();
        Ok(self.g.end_region(results))
    }

    fn attrs(&mut self) -> Result<Attrs, ParseError> {
        self.expect_punct('{')?;
        let mut attrs = Attrs::new();
        if self.eat_punct('}') {
            return Ok(attrs);
        }
        loop {
            let key = self.ident()?;
            let value = if self.eat_punct('=') {
                self.attr_value()?
            } else {
                Attr::Unit
            };
            if attrs.insert(key.clone(), value).is_some() {
                return self.error(format!("attribute `{key}` given twice"));
            }
            if self.eat_punct('}') {
                return Ok(attrs);
            }
            self.expect_punct(',')?;
        }
    }

    fn attr_value(&mut self) -> Result<Attr, ParseError> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                Ok(Attr::Str(s))
            }
            Tok::Number(n) => {
                self.next();
                number(&n).map_or_else(|| self.error(format!("bad number `{n}`")), Ok)
            }
            Tok::Ident(n) if n == "inf" || n == "NaN" => {
                self.next();
                Ok(Attr::Float(n.parse().expect("inf and NaN parse")))
            }
            Tok::Punct('[') => {
                self.next();
                let mut v = Vec::new();
                if self.eat_punct(']') {
                    return Ok(Attr::Ints(v));
                }
                loop {
                    match self.next() {
                        Tok::Number(n) => match n.parse::<i64>() {
                            Ok(x) => v.push(x),
                            Err(_) => {
                                return self
                                    .error(format!("expected an integer in the list, found `{n}`"))
                            }
                        },
                        t => {
                            return self
                                .error(format!("expected an integer in the list, found {t}"))
                        }
                    }
                    if self.eat_punct(']') {
                        return Ok(Attr::Ints(v));
                    }
                    self.expect_punct(',')?;
                }
            }
            t => self.error(format!("expected an attribute value, found {t}")),
        }
    }

    fn tensor_type(&mut self) -> Result<TensorType, ParseError> {
        let d = self.ident()?;
        let dtype: DType = match d.parse() {
            Ok(t) => t,
            Err(e) => {
                self.pos -= 1;
                return self.error(e);
            }
        };
        self.expect_punct('[')?;
        let mut shape = Vec::new();
        if self.eat_punct(']') {
            return Ok(TensorType::new(dtype, shape));
        }
        loop {
            let dim = match self.next() {
                Tok::Number(n) => n.parse::<u64>().ok().map(Dim::Const),
                Tok::Ident(s) => Some(Dim::Sym(s)),
                _ => None,
            };
            match dim {
                Some(d) => shape.push(d),
                None => {
                    self.pos -= 1;
                    return self.error("expected a dimension (a non-negative integer or a symbol)");
                }
            }
            if self.eat_punct(']') {
                return Ok(TensorType::new(dtype, shape));
            }
            self.expect_punct(',')?;
        }
    }
}

fn number(n: &str) -> Option<Attr> {
    let is_float = n.contains(['.', 'e', 'E', 'i', 'N']);
    if is_float {
        n.parse::<f64>().ok().map(Attr::Float)
    } else {
        n.parse::<i64>().ok().map(Attr::Int)
    }
}
