//! The expression tree, built from tokens with GitHub's precedence: `( )`, then `[ ]` and `.`,
//! then `!`, then `< <= > >=`, then `== !=`, then `&&`, then `||`, all left-associative.
//!
//! Like the runner, chains of `&&` (and of `||`) are flattened into one node, property access is
//! an index with a string literal (`a.b` is `a['b']`), and a tree deeper than 50 is refused —
//! which also bounds the evaluator's recursion. Token-level errors (bad symbols, unknown names,
//! argument counts) are found by [`super::lexer`]; the lexer's rules guarantee that the token
//! stream here is well formed, and the parser still reports rather than panics if not.
//!
//! Not here: what the tree means (see [`super::eval`]).

use super::ExprError;
use super::functions::Func;
use super::lexer::{Op, Tok, Token, tokenize};

/// GitHub's limit on the depth of the expression tree.
pub(super) const MAX_DEPTH: usize = 50;

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Node {
    pub(super) kind: NodeKind,
    /// Byte offset of the node's token in the expression.
    pub(super) offset: usize,
    /// 1 for a leaf; one more than the deepest child otherwise.
    depth: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum NodeKind {
    Null,
    Bool(bool),
    Number(f64),
    /// A string literal, or the name after a `.`.
    String(String),
    /// A root context, lowercased.
    NamedValue(String),
    /// `*` in `a.*` or `a[*]`.
    Wildcard,
    Index(Box<Node>, Box<Node>),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Compare(CmpOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

impl Node {
    fn leaf(kind: NodeKind, offset: usize) -> Node {
        Node {
            kind,
            offset,
            depth: 1,
        }
    }

    /// Call `f` on this node and every node below it.
    pub(super) fn walk(&self, f: &mut dyn FnMut(&Node)) {
        f(self);
        match &self.kind {
            NodeKind::Index(a, b) | NodeKind::Compare(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            NodeKind::Not(a) => a.walk(f),
            NodeKind::And(items) | NodeKind::Or(items) | NodeKind::Call(_, items) => {
                items.iter().for_each(|c| c.walk(f));
            }
            NodeKind::Null
            | NodeKind::Bool(_)
            | NodeKind::Number(_)
            | NodeKind::String(_)
            | NodeKind::NamedValue(_)
            | NodeKind::Wildcard => {}
        }
    }
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    pos: usize,
}

/// Parse one expression (the text between `${{` and `}}`).
pub(super) fn parse(src: &str) -> Result<Node, ExprError> {
    let tokens = tokenize(src)?;
    if tokens.is_empty() {
        return Err(ExprError {
            message: "An expression was expected, but the text is empty".to_owned(),
            offset: 0,
        });
    }
    let mut p = Parser {
        src,
        tokens,
        pos: 0,
    };
    let node = p.or()?;
    if p.pos < p.tokens.len() {
        return Err(p.unexpected());
    }
    Ok(node)
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map_or(self.src.len(), |t| t.start)
    }

    fn unexpected(&self) -> ExprError {
        match self.tokens.get(self.pos) {
            Some(t) => ExprError::located(
                format_args!("Unexpected symbol: '{}'", &self.src[t.start..t.end]),
                self.src,
                t.start,
            ),
            None => ExprError::located("Unexpected end of expression", self.src, self.src.len()),
        }
    }

    /// Build an inner node, refusing trees deeper than GitHub allows.
    fn node(&self, kind: NodeKind, offset: usize) -> Result<Node, ExprError> {
        let deepest = match &kind {
            NodeKind::Index(a, b) | NodeKind::Compare(_, a, b) => a.depth.max(b.depth),
            NodeKind::Not(a) => a.depth,
            NodeKind::And(items) | NodeKind::Or(items) | NodeKind::Call(_, items) => {
                items.iter().map(|n| n.depth).max().unwrap_or(0)
            }
            _ => 0,
        };
        let depth = deepest + 1;
        if depth > MAX_DEPTH {
            return Err(ExprError::located(
                format_args!("Exceeded max expression depth {MAX_DEPTH}"),
                self.src,
                offset,
            ));
        }
        Ok(Node {
            kind,
            offset,
            depth,
        })
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        self.chain(Op::Or)
    }

    /// `a && b && c` (or `||`) as one node; nested chains of the same operator, parenthesised
    /// or not, are spliced in as GitHub does.
    fn chain(&mut self, op: Op) -> Result<Node, ExprError> {
        let operand = |p: &mut Self| {
            if op == Op::Or {
                p.chain(Op::And)
            } else {
                p.equality()
            }
        };
        let first = operand(self)?;
        if self.peek() != Some(&Tok::Op(op)) {
            return Ok(first);
        }
        let offset = self.offset();
        let mut items = Vec::new();
        let mut push = |n: Node| match (op, n.kind) {
            (Op::And, NodeKind::And(inner)) | (Op::Or, NodeKind::Or(inner)) => items.extend(inner),
            (_, kind) => items.push(Node { kind, ..n }),
        };
        push(first);
        while self.eat(&Tok::Op(op)) {
            push(operand(self)?);
        }
        let kind = if op == Op::And {
            NodeKind::And(items)
        } else {
            NodeKind::Or(items)
        };
        self.node(kind, offset)
    }

    fn equality(&mut self) -> Result<Node, ExprError> {
        let mut left = self.comparison()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(Op::Eq)) => CmpOp::Eq,
                Some(Tok::Op(Op::Ne)) => CmpOp::Ne,
                _ => return Ok(left),
            };
            let offset = self.offset();
            self.pos += 1;
            let right = self.comparison()?;
            left = self.node(
                NodeKind::Compare(op, Box::new(left), Box::new(right)),
                offset,
            )?;
        }
    }

    fn comparison(&mut self) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(Op::Lt)) => CmpOp::Lt,
                Some(Tok::Op(Op::Le)) => CmpOp::Le,
                Some(Tok::Op(Op::Gt)) => CmpOp::Gt,
                Some(Tok::Op(Op::Ge)) => CmpOp::Ge,
                _ => return Ok(left),
            };
            let offset = self.offset();
            self.pos += 1;
            let right = self.unary()?;
            left = self.node(
                NodeKind::Compare(op, Box::new(left), Box::new(right)),
                offset,
            )?;
        }
    }

    /// `!!…x`, built without recursion so a long run of `!` cannot exhaust the stack.
    fn unary(&mut self) -> Result<Node, ExprError> {
        let mut nots = Vec::new();
        while self.peek() == Some(&Tok::Op(Op::Not)) {
            nots.push(self.offset());
            self.pos += 1;
        }
        let mut node = self.postfix()?;
        for offset in nots.into_iter().rev() {
            node = self.node(NodeKind::Not(Box::new(node)), offset)?;
        }
        Ok(node)
    }

    fn postfix(&mut self) -> Result<Node, ExprError> {
        let mut node = self.primary()?;
        loop {
            let offset = self.offset();
            if self.eat(&Tok::Dereference) {
                let name_offset = self.offset();
                let key = match self.peek().cloned() {
                    Some(Tok::PropertyName(name)) => NodeKind::String(name),
                    Some(Tok::Wildcard) => NodeKind::Wildcard,
                    _ => return Err(self.unexpected()),
                };
                self.pos += 1;
                let key = Node::leaf(key, name_offset);
                node = self.node(NodeKind::Index(Box::new(node), Box::new(key)), offset)?;
            } else if self.eat(&Tok::StartIndex) {
                let index = self.or()?;
                if !self.eat(&Tok::EndIndex) {
                    return Err(self.unexpected());
                }
                node = self.node(NodeKind::Index(Box::new(node), Box::new(index)), offset)?;
            } else {
                return Ok(node);
            }
        }
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let offset = self.offset();
        let Some(tok) = self.peek().cloned() else {
            return Err(self.unexpected());
        };
        self.pos += 1;
        let kind = match tok {
            Tok::Null => NodeKind::Null,
            Tok::Bool(b) => NodeKind::Bool(b),
            Tok::Number(n) => NodeKind::Number(n),
            Tok::Str(s) => NodeKind::String(s),
            Tok::NamedValue(name) => NodeKind::NamedValue(name),
            // Only where the lexer allows it: right after `[` (and `.`, handled above).
            Tok::Wildcard => NodeKind::Wildcard,
            Tok::StartGroup => {
                let inner = self.or()?;
                if !self.eat(&Tok::EndGroup) {
                    return Err(self.unexpected());
                }
                return Ok(inner);
            }
            Tok::Function(info) => {
                if !self.eat(&Tok::StartParameters) {
                    return Err(self.unexpected());
                }
                let mut args = Vec::new();
                if !self.eat(&Tok::EndParameters) {
                    loop {
                        args.push(self.or()?);
                        if self.eat(&Tok::EndParameters) {
                            break;
                        }
                        if !self.eat(&Tok::Separator) {
                            return Err(self.unexpected());
                        }
                    }
                }
                return self.node(NodeKind::Call(info.func, args), offset);
            }
            _ => {
                self.pos -= 1;
                return Err(self.unexpected());
            }
        };
        Ok(Node::leaf(kind, offset))
    }
}
