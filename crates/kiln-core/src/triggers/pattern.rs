//! GitHub's filter patterns (`branches`, `tags`, `paths` and their `-ignore`s), as the
//! "Filter pattern cheat sheet" of GitHub's workflow syntax documents them.
//!
//! A pattern matches the whole name (a branch or tag name without `refs/heads/`, or a path
//! from the repository root):
//! - `*` matches any characters except `/`;
//! - `**` matches any characters including `/`; `**/` matches zero or more whole directories
//!   (so `**/README.md` matches `README.md`, and `docs/**/*.md` matches `docs/a.md`);
//! - `?` makes the preceding character (or `[…]`) optional, `+` repeats it one or more times;
//!   at the start of a pattern they are plain characters, after `*`/`**` they change nothing;
//! - `[…]` matches one character listed or in a range (`a-z`, `A-Z`, `0-9` only);
//! - `\` makes the next character plain;
//! - a leading `!` negates the pattern (see [`PatternList`]).
//!
//! Written here rather than with a glob crate because GitHub's `?` and `+` are regex-like
//! quantifiers, not shell wildcards, and `*` never crosses `/`.

use std::fmt;

/// A pattern GitHub would refuse: what is wrong and where (0-based character index).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter pattern `{pattern}`: {problem} (at character {index})")]
pub struct PatternError {
    pub pattern: String,
    pub index: usize,
    pub problem: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Atom {
    Char(char),
    /// Inclusive ranges; a single character is a range of one.
    Class(Vec<(char, char)>),
    /// `*`: any run of characters without `/`.
    Star,
    /// `**`: any run of characters.
    AnyStar,
    /// `**/`: nothing, or any run of characters that ends with `/` (at least one before it).
    Dirs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quant {
    One,
    /// `?`
    Optional,
    /// `+`
    OneOrMore,
}

/// One compiled pattern (without its `!`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    negated: bool,
    atoms: Vec<(Atom, Quant)>,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn class_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

impl Pattern {
    /// Compile one pattern as written in a workflow (a leading `!` negates it).
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        let err = |index: usize, problem: &'static str| PatternError {
            pattern: source.to_owned(),
            index,
            problem,
        };
        let chars: Vec<char> = source.chars().collect();
        let (negated, start) = match chars.first() {
            Some('!') => (true, 1),
            _ => (false, 0),
        };
        let mut atoms: Vec<(Atom, Quant)> = Vec::new();
        let mut i = start;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '*' => {
                    if chars.get(i + 1) == Some(&'*') {
                        if chars.get(i + 2) == Some(&'/') {
                            atoms.push((Atom::Dirs, Quant::One));
                            i += 3;
                        } else {
                            atoms.push((Atom::AnyStar, Quant::One));
                            i += 2;
                        }
                    } else {
                        atoms.push((Atom::Star, Quant::One));
                        i += 1;
                    }
                }
                '?' | '+' => {
                    let q = if c == '?' {
                        Quant::Optional
                    } else {
                        Quant::OneOrMore
                    };
                    match atoms.last_mut() {
                        // At the start: a plain character (as GitHub's runner-side ports do).
                        None => atoms.push((Atom::Char(c), Quant::One)),
                        Some((Atom::Star | Atom::AnyStar | Atom::Dirs, _)) => {}
                        Some((_, quant)) => {
                            // `a?+` and the like: GitHub's regex would refuse a nested
                            // repetition; keep the widest meaning.
                            *quant = match (*quant, q) {
                                (Quant::One, q) => q,
                                (Quant::Optional, Quant::Optional) => Quant::Optional,
                                (Quant::OneOrMore, Quant::OneOrMore) => Quant::OneOrMore,
                                _ => return Err(err(i, "a `?` or `+` repeats another `?` or `+`")),
                            };
                        }
                    }
                    i += 1;
                }
                '[' => {
                    let open = i;
                    i += 1;
                    let mut ranges = Vec::new();
                    if chars.get(i) == Some(&']') {
                        return Err(err(i, "empty brackets `[]`"));
                    }
                    while i < chars.len() && chars[i] != ']' {
                        let a = chars[i];
                        if !class_char(a) {
                            return Err(err(
                                i,
                                "brackets may only hold letters, digits and ranges a-z, A-Z, 0-9",
                            ));
                        }
                        if chars.get(i + 1) == Some(&'-') {
                            let Some(&b) = chars.get(i + 2).filter(|b| **b != ']') else {
                                return Err(err(i + 1, "a range needs an end"));
                            };
                            let same_kind = (a.is_ascii_digit() && b.is_ascii_digit())
                                || (a.is_ascii_lowercase() && b.is_ascii_lowercase())
                                || (a.is_ascii_uppercase() && b.is_ascii_uppercase());
                            if !same_kind || a > b {
                                return Err(err(
                                    i + 1,
                                    "ranges can only be a-z, A-Z or 0-9 (or part of one)",
                                ));
                            }
                            ranges.push((a, b));
                            i += 3;
                        } else {
                            ranges.push((a, a));
                            i += 1;
                        }
                    }
                    if i >= chars.len() {
                        return Err(err(open, "`[` without a closing `]`"));
                    }
                    atoms.push((Atom::Class(ranges), Quant::One));
                    i += 1;
                }
                '\\' => {
                    let Some(&next) = chars.get(i + 1) else {
                        return Err(err(i, "`\\` at the end escapes nothing"));
                    };
                    atoms.push((Atom::Char(next), Quant::One));
                    i += 2;
                }
                _ => {
                    atoms.push((Atom::Char(c), Quant::One));
                    i += 1;
                }
            }
        }
        Ok(Pattern {
            source: source.to_owned(),
            negated,
            atoms,
        })
    }

    /// Whether the pattern starts with `!`.
    pub fn is_negated(&self) -> bool {
        self.negated
    }

    /// Whether `name` matches the pattern, ignoring its `!`.
    pub fn matches(&self, name: &str) -> bool {
        let s: Vec<char> = name.chars().collect();
        // memo[ai * (len + 1) + si]: None = not computed yet.
        let mut memo = vec![None; (self.atoms.len() + 1) * (s.len() + 1)];
        self.match_from(0, 0, &s, &mut memo)
    }

    fn match_from(&self, ai: usize, si: usize, s: &[char], memo: &mut [Option<bool>]) -> bool {
        let key = ai * (s.len() + 1) + si;
        if let Some(known) = memo[key] {
            return known;
        }
        let result = match self.atoms.get(ai) {
            None => si == s.len(),
            Some((atom, quant)) => {
                let next =
                    |memo: &mut [Option<bool>], at: usize| self.match_from(ai + 1, at, s, memo);
                match atom {
                    Atom::Star => {
                        let mut end = si;
                        let mut ok = next(memo, si);
                        while !ok && end < s.len() && s[end] != '/' {
                            end += 1;
                            ok = next(memo, end);
                        }
                        ok
                    }
                    Atom::AnyStar => (si..=s.len()).any(|end| next(memo, end)),
                    Atom::Dirs => {
                        next(memo, si)
                            || (si + 2..=s.len()).any(|end| s[end - 1] == '/' && next(memo, end))
                    }
                    Atom::Char(_) | Atom::Class(_) => {
                        let one = |at: usize| at < s.len() && atom_accepts(atom, s[at]);
                        match quant {
                            Quant::One => one(si) && next(memo, si + 1),
                            Quant::Optional => next(memo, si) || (one(si) && next(memo, si + 1)),
                            Quant::OneOrMore => {
                                let mut end = si;
                                let mut ok = false;
                                while !ok && one(end) {
                                    end += 1;
                                    ok = next(memo, end);
                                }
                                ok
                            }
                        }
                    }
                }
            }
        };
        memo[key] = Some(result);
        result
    }
}

fn atom_accepts(atom: &Atom, c: char) -> bool {
    match atom {
        Atom::Char(x) => *x == c,
        Atom::Class(ranges) => ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)),
        Atom::Star | Atom::AnyStar | Atom::Dirs => false,
    }
}

/// An ordered list of patterns as one filter holds them (`branches: [...]`).
///
/// Evaluated in order, the last pattern that matches a name decides: a plain pattern includes
/// it, a `!` pattern excludes it ("a later pattern overrides earlier"). A name no pattern
/// matches is not included. For `-ignore` lists "included" means "ignored", so a `!` pattern
/// there takes a name back out of the ignored set (GitHub documents `!` for the positive
/// lists only; this is the same rule read the same way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternList {
    patterns: Vec<Pattern>,
}

impl PatternList {
    /// Compile every pattern; the first invalid one is the error.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<PatternList, PatternError> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(PatternList { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The pattern that decides for `name`, if any matches, with whether it includes `name`.
    pub fn decide(&self, name: &str) -> Option<(&Pattern, bool)> {
        self.patterns
            .iter()
            .rev()
            .find(|p| p.matches(name))
            .map(|p| (p, !p.negated))
    }

    /// Whether `name` is included (see the type's documentation).
    pub fn includes(&self, name: &str) -> bool {
        self.decide(name).is_some_and(|(_, inc)| inc)
    }
}
