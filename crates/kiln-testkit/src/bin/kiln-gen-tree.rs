//! Writes a synthetic package tree ([`kiln_testkit::tree`]) for tests and benchmarks.
//!
//! usage: kiln-gen-tree OUT_DIR [--packages N] [--seed S] [--cycles K]
//!        [--sleep-ms MIN-MAX] [--build CMD] [--depth D] [--ninja]
//!
//! `--ninja` also writes `OUT_DIR/build.ninja` with the same graph (for comparing
//! `kiln build --dry-run` with `ninja -n`). Prints one JSON line: packages, edges, depth,
//! largest fan-in, cycles.

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_testkit::tree::{GeneratedTree, TreeSpec};

const USAGE: &str = "usage: kiln-gen-tree OUT_DIR [--packages N] [--seed S] [--cycles K] \
                     [--sleep-ms MIN-MAX] [--build CMD] [--depth D] [--ninja]";

fn parse(args: &[String]) -> Result<(PathBuf, TreeSpec, bool), String> {
    let mut out = None;
    let mut spec = TreeSpec::new(10_000, 1);
    let mut ninja = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{name}: `{v}` is not a number"))
        };
        match arg.as_str() {
            "--packages" => spec.packages = number(arg, value(arg)?)? as usize,
            "--seed" => spec.seed = number(arg, value(arg)?)?,
            "--cycles" => spec.cycles = number(arg, value(arg)?)? as usize,
            "--depth" => spec.depth = number(arg, value(arg)?)? as u32,
            "--build" => spec.build = value(arg)?,
            "--ninja" => ninja = true,
            "--sleep-ms" => {
                let v = value(arg)?;
                let (lo, hi) = v.split_once('-').unwrap_or((&v, &v));
                let lo = number(arg, lo.to_owned())? as u32;
                let hi = number(arg, hi.to_owned())? as u32;
                if hi < lo {
                    return Err(format!("--sleep-ms: {v} is not MIN-MAX"));
                }
                spec.sleep_ms = Some((lo, hi));
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            a if a.starts_with('-') => return Err(format!("unknown option {a}\n{USAGE}")),
            a if out.is_none() => out = Some(PathBuf::from(a)),
            a => return Err(format!("unexpected argument {a}\n{USAGE}")),
        }
    }
    let out = out.ok_or_else(|| USAGE.to_owned())?;
    Ok((out, spec, ninja))
}

#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool's report and usage errors"
)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, spec, ninja) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    // Writing over an older tree would leave its extra packages behind: a different tree.
    if std::fs::read_dir(&out).is_ok_and(|mut entries| entries.next().is_some()) {
        eprintln!("{}: not empty; give a new or empty folder", out.display());
        return ExitCode::from(2);
    }
    let tree = GeneratedTree::generate(&spec);
    let written = std::fs::create_dir_all(&out)
        .and_then(|()| tree.write(&out))
        .and_then(|()| {
            if ninja {
                tree.write_ninja(&out)
            } else {
                Ok(())
            }
        });
    if let Err(e) = written {
        eprintln!("{}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let edges: usize = tree
        .depends
        .iter()
        .chain(&tree.run_depends)
        .map(Vec::len)
        .sum();
    let (depth, fan_in) = tree.shape();
    println!(
        "{{\"packages\":{},\"edges\":{edges},\"depth\":{depth},\"max_fan_in\":{fan_in},\"cycles\":{}}}",
        tree.len(),
        tree.cycles.len()
    );
    ExitCode::SUCCESS
}
