//! What the command lines of the tools share: a leading `--` is dropped (so that
//! `cargo demo -- --quick` works as `cargo demo --quick` does), `node <file>` runs a node process
//! ([`crate::node`]), `--help` prints the usage and exits 0, and a bad option prints the error
//! and the usage and exits 2. Each tool parses its own options with `lexopt`.

use std::ffi::OsString;
use std::process::ExitCode;

use lexopt::ValueExt;

/// The command line without the program's name and without a leading `--`.
pub fn args() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    args
}

/// Runs the node process if the command line is `node <file>`, and returns its exit code.
pub fn node_subcommand(args: &[OsString]) -> Option<ExitCode> {
    if args.first()? != "node" {
        return None;
    }
    let rest: Vec<String> = args[1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Some(crate::node::main(&rest))
}

/// The value of the option `--<option>` just read, parsed by `parse`; an error names the option.
pub fn value<T, E: std::fmt::Display>(
    parser: &mut lexopt::Parser,
    option: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, lexopt::Error> {
    let value = parser.value()?.string()?;
    parse(&value).map_err(|e| format!("--{option} {value:?}: {e}").into())
}

/// What `--help` does.
pub fn help(usage: &str) -> ExitCode {
    println!("{usage}");
    ExitCode::SUCCESS
}

/// What a bad command line does.
pub fn usage_error(usage: &str, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}\n\n{usage}");
    ExitCode::from(2)
}
