//! Tokens of an expression, and GitHub's rules on which token may follow which.
//!
//! This mirrors the runner's lexical analyser: numbers and keywords run to the next token
//! boundary (so `1-2` or `a$b` are one bad symbol, not three tokens); `.` is a number when it
//! starts an operand and a dereference otherwise; `(` is a call when it follows a function
//! name; and each token is checked against the previous one, so `a b`, `'x'.y` or `f(,1)` fail
//! here at the offending symbol. Names are resolved here too — unknown named values and
//! functions, and argument counts — so the first problem in reading order is the one reported,
//! as in GitHub.
//!
//! Not here: precedence and the tree (see [`super::parser`]).

use super::ExprError;
use super::functions::{Func, FuncInfo};
use super::value::parse_number;

/// GitHub's limit on the length of one expression, in characters.
pub(super) const MAX_LENGTH: usize = 21_000;

/// How many `(`, `[` and calls may be open at once. GitHub has no such limit (only its depth
/// limit of 50 on the tree), but the parser recurses once per level, so this keeps absurd input
/// from exhausting the stack; any expression deeper than this also exceeds GitHub's depth.
const MAX_NESTING: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Not,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    /// `(` grouping.
    StartGroup,
    StartIndex,
    /// `(` of a call.
    StartParameters,
    EndGroup,
    EndIndex,
    EndParameters,
    Separator,
    Dereference,
    Wildcard,
    Op(Op),
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    /// The name after a `.`.
    PropertyName(String),
    Function(&'static FuncInfo),
    /// A root named value, lowercased.
    NamedValue(String),
}

impl Tok {
    /// An operator on the runner's operator stack (everything but operands and closers
    /// counts for "the expression ends too early").
    fn expects_more(&self) -> bool {
        matches!(
            self,
            Tok::StartGroup
                | Tok::StartIndex
                | Tok::StartParameters
                | Tok::Separator
                | Tok::Dereference
                | Tok::Op(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Token {
    pub(super) tok: Tok,
    /// Byte range in the source.
    pub(super) start: usize,
    pub(super) end: usize,
}

/// What the previous token was, for the legality rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    Nothing,
    StartGroup,
    StartIndex,
    StartParameters,
    EndGroup,
    EndIndex,
    EndParameters,
    Separator,
    Dereference,
    Wildcard,
    Op,
    Literal,
    PropertyName,
    Function,
    NamedValue,
}

impl Prev {
    fn of(token: Option<&Token>) -> Prev {
        match token.map(|t| &t.tok) {
            None => Prev::Nothing,
            Some(Tok::StartGroup) => Prev::StartGroup,
            Some(Tok::StartIndex) => Prev::StartIndex,
            Some(Tok::StartParameters) => Prev::StartParameters,
            Some(Tok::EndGroup) => Prev::EndGroup,
            Some(Tok::EndIndex) => Prev::EndIndex,
            Some(Tok::EndParameters) => Prev::EndParameters,
            Some(Tok::Separator) => Prev::Separator,
            Some(Tok::Dereference) => Prev::Dereference,
            Some(Tok::Wildcard) => Prev::Wildcard,
            Some(Tok::Op(_)) => Prev::Op,
            Some(Tok::Null | Tok::Bool(_) | Tok::Number(_) | Tok::Str(_)) => Prev::Literal,
            Some(Tok::PropertyName(_)) => Prev::PropertyName,
            Some(Tok::Function(_)) => Prev::Function,
            Some(Tok::NamedValue(_)) => Prev::NamedValue,
        }
    }

    /// Where an operand (or `(` or `!`) may start: first, or after `,` `(` `[` or an operator.
    fn starts_operand(self) -> bool {
        matches!(
            self,
            Prev::Nothing
                | Prev::Separator
                | Prev::StartGroup
                | Prev::StartParameters
                | Prev::StartIndex
                | Prev::Op
        )
    }

    /// Something that can be dereferenced or indexed: `)`, `]`, `*`, a property or a named
    /// value (not a literal: `'abc'.length` is an error in GitHub).
    fn accessible(self) -> bool {
        matches!(
            self,
            Prev::EndGroup
                | Prev::EndParameters
                | Prev::EndIndex
                | Prev::Wildcard
                | Prev::PropertyName
                | Prev::NamedValue
        )
    }

    /// The end of an operand: what a binary operator, `,`, `)` or `]` may follow.
    fn ends_operand(self) -> bool {
        self.accessible() || self == Prev::Literal
    }
}

/// An open `(`, `[` or call, to match its closer and count a call's arguments.
enum Open {
    Group,
    Index,
    Call {
        func: &'static FuncInfo,
        /// Byte range of the function's name.
        name: (usize, usize),
        separators: usize,
    },
}

fn is_boundary(c: char) -> bool {
    matches!(
        c,
        '(' | '[' | ')' | ']' | ',' | '.' | '!' | '>' | '<' | '=' | '&' | '|'
    ) || c.is_whitespace()
}

/// A keyword as GitHub allows it: a letter or `_`, then letters, digits, `_` and `-`.
pub(super) fn is_legal_keyword(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    tokens: Vec<Token>,
    open: Vec<Open>,
}

/// Split an expression into tokens, or report its first bad symbol.
pub(super) fn tokenize(src: &str) -> Result<Vec<Token>, ExprError> {
    if src.chars().count() > MAX_LENGTH {
        return Err(ExprError {
            message: format!(
                "Exceeded max expression length {MAX_LENGTH} ({} characters)",
                src.chars().count()
            ),
            offset: 0,
        });
    }
    let mut lexer = Lexer {
        src,
        pos: 0,
        tokens: Vec::new(),
        open: Vec::new(),
    };
    while let Some(token) = lexer.next()? {
        lexer.tokens.push(token);
    }
    if let Some(last) = lexer.tokens.last()
        && (!lexer.open.is_empty() || last.tok.expects_more())
    {
        return Err(ExprError::located(
            format_args!(
                "Unexpected end of expression: '{}'",
                &src[last.start..last.end]
            ),
            src,
            last.start,
        ));
    }
    Ok(lexer.tokens)
}

impl<'s> Lexer<'s> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn unexpected(&self, start: usize, end: usize) -> ExprError {
        ExprError::located(
            format_args!("Unexpected symbol: '{}'", &self.src[start..end]),
            self.src,
            start,
        )
    }

    /// Advance past the rest of a run of non-boundary characters.
    fn skip_to_boundary(&mut self) {
        while let Some(c) = self.peek() {
            if is_boundary(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn next(&mut self) -> Result<Option<Token>, ExprError> {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
        let Some(c) = self.peek() else {
            return Ok(None);
        };
        let start = self.pos;
        let prev = Prev::of(self.tokens.last());
        let tok = match c {
            '(' => {
                self.pos += 1;
                if prev == Prev::Function {
                    Tok::StartParameters
                } else {
                    Tok::StartGroup
                }
            }
            '[' => {
                self.pos += 1;
                Tok::StartIndex
            }
            ')' => {
                self.pos += 1;
                if matches!(self.open.last(), Some(Open::Call { .. })) {
                    Tok::EndParameters
                } else {
                    Tok::EndGroup
                }
            }
            ']' => {
                self.pos += 1;
                Tok::EndIndex
            }
            ',' => {
                self.pos += 1;
                Tok::Separator
            }
            '*' => {
                self.pos += 1;
                Tok::Wildcard
            }
            '\'' => self.string(start)?,
            '!' | '>' | '<' | '=' | '&' | '|' => self.operator(start)?,
            '.' if !prev.starts_operand() => {
                self.pos += 1;
                Tok::Dereference
            }
            '.' | '-' | '+' | '0'..='9' => {
                // Digits and `.` both continue a number: `1.5`, `-2.99e-2`, `0xff`.
                self.pos += 1;
                while let Some(c) = self.peek() {
                    if is_boundary(c) && c != '.' {
                        break;
                    }
                    self.pos += c.len_utf8();
                }
                let n = parse_number(&self.src[start..self.pos]);
                if n.is_nan() {
                    return Err(self.unexpected(start, self.pos));
                }
                Tok::Number(n)
            }
            _ => {
                self.pos += c.len_utf8();
                self.skip_to_boundary();
                self.keyword(start, prev)?
            }
        };
        self.check_follows(&tok, prev, start)?;
        self.track_nesting(&tok, start)?;
        Ok(Some(Token {
            tok,
            start,
            end: self.pos,
        }))
    }

    /// A `'…'` string; `''` inside is one quote.
    fn string(&mut self, start: usize) -> Result<Tok, ExprError> {
        let mut out = String::new();
        self.pos += 1;
        loop {
            let Some(rel) = self.src[self.pos..].find('\'') else {
                return Err(ExprError::located(
                    format_args!(
                        "Unexpected symbol: '{}' (the string is not closed with a single quote)",
                        &self.src[start..]
                    ),
                    self.src,
                    start,
                ));
            };
            out.push_str(&self.src[self.pos..self.pos + rel]);
            self.pos += rel + 1;
            if self.peek() == Some('\'') {
                out.push('\'');
                self.pos += 1;
            } else {
                return Ok(Tok::Str(out));
            }
        }
    }

    fn operator(&mut self, start: usize) -> Result<Tok, ExprError> {
        let two = self.src.get(start..start + 2);
        let op = match two {
            Some("!=") => Some(Op::Ne),
            Some(">=") => Some(Op::Ge),
            Some("<=") => Some(Op::Le),
            Some("==") => Some(Op::Eq),
            Some("&&") => Some(Op::And),
            Some("||") => Some(Op::Or),
            _ => None,
        };
        if let Some(op) = op {
            self.pos += 2;
            return Ok(Tok::Op(op));
        }
        self.pos += 1;
        match &self.src[start..self.pos] {
            "!" => Ok(Tok::Op(Op::Not)),
            ">" => Ok(Tok::Op(Op::Gt)),
            "<" => Ok(Tok::Op(Op::Lt)),
            _ => {
                // A lone `=`, `&` or `|`: report it with whatever is glued to it.
                self.skip_to_boundary();
                Err(self.unexpected(start, self.pos))
            }
        }
    }

    fn keyword(&mut self, start: usize, prev: Prev) -> Result<Tok, ExprError> {
        let word = &self.src[start..self.pos];
        if !is_legal_keyword(word) {
            return Err(self.unexpected(start, self.pos));
        }
        if prev == Prev::Dereference {
            return Ok(Tok::PropertyName(word.to_owned()));
        }
        // Literal keywords are case-sensitive in GitHub: `True` is a (bad) named value.
        match word {
            "null" => return Ok(Tok::Null),
            "true" => return Ok(Tok::Bool(true)),
            "false" => return Ok(Tok::Bool(false)),
            "NaN" => return Ok(Tok::Number(f64::NAN)),
            "Infinity" => return Ok(Tok::Number(f64::INFINITY)),
            _ => {}
        }
        let rest = &self.src[self.pos..];
        if rest.trim_start().starts_with('(') {
            // Checked only where a function may stand, so `a b(` reports `b`'s position
            // rather than an unknown function.
            if prev.starts_operand() {
                return match FuncInfo::lookup(word) {
                    Some(info) => Ok(Tok::Function(info)),
                    None => Err(ExprError::located(
                        format_args!("Unrecognized function: '{word}'"),
                        self.src,
                        start,
                    )),
                };
            }
            return Err(self.unexpected(start, self.pos));
        }
        let lower = word.to_ascii_lowercase();
        if prev.starts_operand() && !super::CONTEXTS.contains(&lower.as_str()) {
            return Err(ExprError::located(
                format_args!(
                    "Unrecognized named-value: '{word}' (available: {})",
                    super::CONTEXTS.join(", ")
                ),
                self.src,
                start,
            ));
        }
        Ok(Tok::NamedValue(lower))
    }

    /// GitHub's table of which token may follow which.
    fn check_follows(&self, tok: &Tok, prev: Prev, start: usize) -> Result<(), ExprError> {
        let legal = match tok {
            Tok::StartGroup
            | Tok::Op(Op::Not)
            | Tok::Null
            | Tok::Bool(_)
            | Tok::Number(_)
            | Tok::Str(_)
            | Tok::Function(_)
            | Tok::NamedValue(_) => prev.starts_operand(),
            Tok::StartIndex | Tok::Dereference => prev.accessible(),
            Tok::StartParameters => prev == Prev::Function,
            Tok::EndGroup | Tok::EndIndex | Tok::Separator | Tok::Op(_) => prev.ends_operand(),
            Tok::EndParameters => prev.ends_operand() || prev == Prev::StartParameters,
            Tok::Wildcard => matches!(prev, Prev::StartIndex | Prev::Dereference),
            Tok::PropertyName(_) => prev == Prev::Dereference,
        };
        if legal {
            Ok(())
        } else {
            Err(self.unexpected(start, self.pos))
        }
    }

    /// Match closers with openers, count a call's arguments and check them against the
    /// function's arity.
    fn track_nesting(&mut self, tok: &Tok, start: usize) -> Result<(), ExprError> {
        match tok {
            Tok::StartGroup | Tok::StartIndex | Tok::StartParameters => {
                let open = match tok {
                    Tok::StartGroup => Open::Group,
                    Tok::StartIndex => Open::Index,
                    _ => match self.tokens.last() {
                        Some(Token {
                            tok: Tok::Function(func),
                            start,
                            end,
                        }) => Open::Call {
                            func,
                            name: (*start, *end),
                            separators: 0,
                        },
                        _ => return Err(self.unexpected(start, self.pos)),
                    },
                };
                if self.open.len() >= MAX_NESTING {
                    return Err(ExprError::located(
                        format_args!(
                            "Exceeded max expression depth {}: more than {MAX_NESTING} nested '(', '[' or calls",
                            super::parser::MAX_DEPTH
                        ),
                        self.src,
                        start,
                    ));
                }
                self.open.push(open);
            }
            Tok::EndGroup => {
                if !matches!(self.open.last(), Some(Open::Group)) {
                    return Err(self.unexpected(start, self.pos));
                }
                self.open.pop();
            }
            Tok::EndIndex => {
                if !matches!(self.open.last(), Some(Open::Index)) {
                    return Err(self.unexpected(start, self.pos));
                }
                self.open.pop();
            }
            Tok::Separator => match self.open.last_mut() {
                Some(Open::Call { separators, .. }) => *separators += 1,
                _ => return Err(self.unexpected(start, self.pos)),
            },
            Tok::EndParameters => {
                let empty = matches!(
                    self.tokens.last(),
                    Some(Token {
                        tok: Tok::StartParameters,
                        ..
                    })
                );
                let Some(Open::Call {
                    func,
                    name,
                    separators,
                }) = self.open.pop()
                else {
                    return Err(self.unexpected(start, self.pos));
                };
                let count = if empty { 0 } else { separators + 1 };
                func.check_arity(count)
                    .map_err(|what| ExprError::located(what, self.src, name.0))?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl FuncInfo {
    /// The argument count is within the function's bounds.
    fn check_arity(&self, count: usize) -> Result<(), String> {
        let wanted = if self.min == self.max {
            format!("{}", self.min)
        } else if self.max == usize::from(u8::MAX) {
            format!("at least {}", self.min)
        } else {
            format!("{} to {}", self.min, self.max)
        };
        let plural = if wanted == "1" { "" } else { "s" };
        let got = format!(
            "'{}' takes {wanted} argument{plural}, {count} given",
            self.name
        );
        if count < self.min {
            Err(format!("Too few parameters supplied: {got}"))
        } else if count > self.max {
            Err(format!("Too many parameters supplied: {got}"))
        } else if self.func == Func::Case && count.is_multiple_of(2) {
            Err(format!(
                "Even number of parameters supplied, requires an odd number of parameters: {got}"
            ))
        } else {
            Ok(())
        }
    }
}
