//! The command's output on stdout, where a reader that goes away is no error.
//!
//! `println!` panics when stdout is a closed pipe: `bridle audit | head` would print a panic
//! and exit 101. Every command writes through [`write`] instead.

use std::io::Write;

/// Writes to stdout. A reader that has gone away (`bridle audit | head`) is not an error
/// worth a word: the command stops quietly with success, as `head` asked (ripgrep does the
/// same). Any other failure to write is reported.
pub fn write(args: std::fmt::Arguments<'_>) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(format!("cannot write the output: {e}")),
    }
}
