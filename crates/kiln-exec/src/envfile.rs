//! The environment files a step writes to talk back to the runner: `$GITHUB_OUTPUT`
//! (`$KILN_OUTPUT`), `$GITHUB_ENV` and `$GITHUB_PATH`, parsed exactly as GitHub's runner does.
//!
//! `NAME=VALUE` lines and the heredoc form
//!
//! ```text
//! NAME<<DELIM
//! line 1
//! line 2
//! DELIM
//! ```
//!
//! Whichever of `=` and `<<` comes first on a line decides the form. Empty lines are ignored;
//! a line with neither is an error, and so is a heredoc whose delimiter never comes.
//! Not here: reading the files (the caller does, once per step) or applying the values.

/// What is wrong with an environment file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvFileError {
    #[error("invalid line `{line}`: expected `NAME=VALUE` or `NAME<<DELIMITER`")]
    InvalidFormat { line: String },
    #[error("invalid line `{line}`: the name must not be empty")]
    EmptyName { line: String },
    #[error("invalid line `{line}`: the heredoc delimiter must not be empty")]
    EmptyDelimiter { line: String },
    #[error("matching delimiter `{delimiter}` not found for `{name}`")]
    MissingDelimiter { name: String, delimiter: String },
    #[error("the value of `{name}` ends without a newline before its delimiter `{delimiter}`")]
    MissingNewline { name: String, delimiter: String },
}

/// Reads one line starting at `*pos`; returns the line (without its newline) and the newline
/// that ended it (`"\r\n"`, `"\n"`, or `""` at the end of the text). `None` past the end.
fn read_line<'a>(text: &'a str, pos: &mut usize) -> Option<(&'a str, &'a str)> {
    if *pos >= text.len() {
        return None;
    }
    let rest = &text[*pos..];
    match rest.find('\n') {
        Some(i) => {
            let (line, nl) = if i > 0 && rest.as_bytes()[i - 1] == b'\r' {
                (&rest[..i - 1], "\r\n")
            } else {
                (&rest[..i], "\n")
            };
            *pos += i + 1;
            Some((line, nl))
        }
        None => {
            *pos = text.len();
            Some((rest, ""))
        }
    }
}

/// Parses a `$GITHUB_OUTPUT`/`$GITHUB_ENV` file into `(name, value)` pairs in file order (a
/// later pair with the same name wins when the caller inserts them into a map).
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((line, _)) = read_line(text, &mut pos) {
        if line.is_empty() {
            continue;
        }
        let eq = line.find('=');
        let heredoc = line.find("<<");
        match (eq, heredoc) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                let name = &line[..e];
                if name.is_empty() {
                    return Err(EnvFileError::EmptyName { line: line.into() });
                }
                out.push((name.to_owned(), line[e + 1..].to_owned()));
            }
            (_, Some(h)) => {
                let name = &line[..h];
                let delimiter = &line[h + 2..];
                if name.is_empty() {
                    return Err(EnvFileError::EmptyName { line: line.into() });
                }
                if delimiter.is_empty() {
                    return Err(EnvFileError::EmptyDelimiter { line: line.into() });
                }
                let start = pos;
                let mut end = pos;
                loop {
                    let Some((l, nl)) = read_line(text, &mut pos) else {
                        return Err(EnvFileError::MissingDelimiter {
                            name: name.into(),
                            delimiter: delimiter.into(),
                        });
                    };
                    if l == delimiter {
                        break;
                    }
                    if nl.is_empty() {
                        // The last line of the file is neither the delimiter nor ended by a
                        // newline: GitHub reports the missing newline rather than guessing.
                        return Err(EnvFileError::MissingNewline {
                            name: name.into(),
                            delimiter: delimiter.into(),
                        });
                    }
                    end = pos - nl.len();
                }
                let value = if end > start { &text[start..end] } else { "" };
                out.push((name.to_owned(), value.to_owned()));
            }
            _ => return Err(EnvFileError::InvalidFormat { line: line.into() }),
        }
    }
    Ok(out)
}

/// Parses a `$GITHUB_PATH` file: one directory per non-blank line, in file order.
pub fn parse_path_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse_env_file(text).unwrap()
    }

    fn p(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn simple_pairs_keep_everything_after_the_first_equals() {
        assert_eq!(
            pairs("a=1\n\nb=x=y\nc=\n"),
            vec![p("a", "1"), p("b", "x=y"), p("c", "")]
        );
        assert_eq!(pairs("a=1"), vec![p("a", "1")]);
        assert_eq!(pairs("a=1\r\nb=2\r\n"), vec![p("a", "1"), p("b", "2")]);
    }

    #[test]
    fn heredoc_keeps_inner_newlines_and_drops_the_last() {
        assert_eq!(
            pairs("json<<EOF\n{\n  \"a\": 1\n}\nEOF\nnext=1\n"),
            vec![p("json", "{\n  \"a\": 1\n}"), p("next", "1")]
        );
        assert_eq!(pairs("e<<EOF\nEOF\n"), vec![p("e", "")]);
        assert_eq!(pairs("e<<EOF\nEOF"), vec![p("e", "")]);
        assert_eq!(pairs("w<<EOF\r\na\r\nb\r\nEOF\r\n"), vec![p("w", "a\r\nb")]);
        // `=` after `<<` belongs to the delimiter; `<<` after `=` to the value.
        assert_eq!(pairs("a<<x=y\n1\nx=y\n"), vec![p("a", "1")]);
        assert_eq!(pairs("a=b<<c\n"), vec![p("a", "b<<c")]);
    }

    #[test]
    fn malformed_files_are_errors() {
        assert_eq!(
            parse_env_file("novalue\n"),
            Err(EnvFileError::InvalidFormat {
                line: "novalue".into()
            })
        );
        assert!(matches!(
            parse_env_file("=v\n"),
            Err(EnvFileError::EmptyName { .. })
        ));
        assert!(matches!(
            parse_env_file("a<<\n"),
            Err(EnvFileError::EmptyDelimiter { .. })
        ));
        assert!(matches!(
            parse_env_file("a<<EOF\nline\n"),
            Err(EnvFileError::MissingDelimiter { .. })
        ));
        assert!(matches!(
            parse_env_file("a<<EOF\nline"),
            Err(EnvFileError::MissingNewline { .. })
        ));
    }

    #[test]
    fn path_file_lines() {
        assert_eq!(
            parse_path_file("/a\n\n  /b c \n"),
            vec!["/a".to_owned(), "/b c".to_owned()]
        );
    }
}
