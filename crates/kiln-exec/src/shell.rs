//! Which command runs a `run:` script: GitHub's `shell:` keywords and custom `{0}` templates.
//!
//! Pure: turns the (already rendered) `shell:` value into a program, its arguments (with `{0}`
//! standing for the script file) and the script file's extension. Not here: writing the
//! script or spawning anything.

use std::path::Path;
use std::sync::OnceLock;

/// A `shell:` that cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error(
        "shell `{0}` is not supported by kiln (no Windows shells); use bash, sh, python or a custom command with {{0}}"
    )]
    Unsupported(String),
    #[error("shell `{0}` is empty or has an unterminated quote")]
    Malformed(String),
}

/// A resolved shell: `program args…` where one or more args contain `{0}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    pub program: String,
    /// Arguments; `{0}` in any of them is replaced by the script path.
    pub args: Vec<String>,
    /// Extension of the script file, with its dot (`.sh`, `.py`) or empty.
    pub extension: &'static str,
}

impl ShellCommand {
    fn new(program: &str, args: &[&str], extension: &'static str) -> Self {
        Self {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            extension,
        }
    }

    /// The arguments with `{0}` replaced by `script`.
    pub fn args_for(&self, script: &str) -> Vec<String> {
        self.args.iter().map(|a| a.replace("{0}", script)).collect()
    }
}

/// Whether `bash` is on the PATH kiln itself was started with. Checked once per process:
/// the default shell depends on it and it does not change while kiln runs.
fn bash_available() -> bool {
    static BASH: OnceLock<bool> = OnceLock::new();
    *BASH.get_or_init(|| {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| is_executable(&dir.join("bash")))
        })
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves a step's `shell:` (after step → job defaults → workflow defaults; `None` when
/// none of them says anything).
pub(crate) fn resolve(shell: Option<&str>) -> Result<ShellCommand, ShellError> {
    let Some(shell) = shell.map(str::trim) else {
        return Ok(if bash_available() {
            ShellCommand::new("bash", &["-e", "{0}"], ".sh")
        } else {
            ShellCommand::new("sh", &["-e", "{0}"], ".sh")
        });
    };
    Ok(match shell {
        "bash" => ShellCommand::new(
            "bash",
            &["--noprofile", "--norc", "-eo", "pipefail", "{0}"],
            ".sh",
        ),
        "sh" => ShellCommand::new("sh", &["-e", "{0}"], ".sh"),
        "python" => ShellCommand::new("python3", &["{0}"], ".py"),
        "pwsh" | "powershell" | "cmd" => return Err(ShellError::Unsupported(shell.to_owned())),
        custom => {
            let mut words = split_command_line(custom)
                .filter(|w| !w.is_empty())
                .ok_or_else(|| ShellError::Malformed(custom.to_owned()))?;
            if !words.iter().any(|w| w.contains("{0}")) {
                // GitHub appends the script path to a template that does not place it.
                words.push("{0}".to_owned());
            }
            let program = words.remove(0);
            let extension = extension_for(&program);
            ShellCommand {
                program,
                args: words,
                extension,
            }
        }
    })
}

/// The script extension for a custom shell's program, so that interpreters that care about
/// it (Python's tracebacks, …) see the usual one.
fn extension_for(program: &str) -> &'static str {
    let base = program.rsplit('/').next().unwrap_or(program);
    match base {
        "bash" | "sh" | "dash" | "zsh" | "ksh" => ".sh",
        b if b.starts_with("python") => ".py",
        _ => "",
    }
}

/// Splits a command line into words like a POSIX shell would for plain words, single and
/// double quotes and backslash escapes (no expansions). `None` for an unterminated quote.
pub(crate) fn split_command_line(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => cur.push(c),
                            c => {
                                cur.push('\\');
                                cur.push(c);
                            }
                        },
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_map_to_githubs_commands() {
        let bash = resolve(Some("bash")).unwrap();
        assert_eq!(bash.program, "bash");
        assert_eq!(
            bash.args_for("/t/s.sh"),
            ["--noprofile", "--norc", "-eo", "pipefail", "/t/s.sh"]
        );
        let sh = resolve(Some("sh")).unwrap();
        assert_eq!(
            (sh.program.as_str(), sh.args_for("x")),
            ("sh", vec!["-e".into(), "x".into()])
        );
        let py = resolve(Some("python")).unwrap();
        assert_eq!((py.program.as_str(), py.extension), ("python3", ".py"));
        assert!(matches!(
            resolve(Some("pwsh")),
            Err(ShellError::Unsupported(_))
        ));
        let default = resolve(None).unwrap();
        assert_eq!(default.args, ["-e", "{0}"]);
    }

    #[test]
    fn custom_templates_split_and_place_the_script() {
        let c = resolve(Some("perl -w {0}")).unwrap();
        assert_eq!(c.program, "perl");
        assert_eq!(c.args_for("/s"), ["-w", "/s"]);
        assert_eq!(c.extension, "");
        let c = resolve(Some("bash -c 'source {0}'")).unwrap();
        assert_eq!(c.args_for("/s"), ["-c", "source /s"]);
        assert_eq!(c.extension, ".sh");
        // Without {0}, the script path is appended.
        let c = resolve(Some("python3 -u")).unwrap();
        assert_eq!(c.args_for("/s.py"), ["-u", "/s.py"]);
        assert_eq!(c.extension, ".py");
        assert!(matches!(resolve(Some("  ")), Err(ShellError::Malformed(_))));
        assert!(matches!(
            resolve(Some("x 'y")),
            Err(ShellError::Malformed(_))
        ));
    }

    #[test]
    fn command_line_splitting() {
        assert_eq!(
            split_command_line(r#"a "b c" d\ e 'f"g' "h\"i" ''"#).unwrap(),
            ["a", "b c", "d e", "f\"g", "h\"i", ""]
        );
    }
}
