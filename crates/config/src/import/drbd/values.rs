//! Typed values of drbd.conf statements (a single value, numbers, durations, choices)
//! and the errors about them, each located at its token.

use std::time::Duration;

use super::syntax::{Stmt, Tok};
use crate::diag::{Sink, Source};
use crate::units;

pub(super) fn error_count(sink: &Sink) -> usize {
    sink.items
        .iter()
        .filter(|d| d.severity == crate::diag::Severity::Error)
        .count()
}

pub(super) fn err(src: &Source<'_>, sink: &mut Sink, t: &Tok, msg: &str) {
    sink.push(src.error(t.at..t.at, msg.to_string()));
}

pub(super) fn expect_block<'s>(
    src: &Source<'_>,
    sink: &mut Sink,
    s: &'s Stmt,
    what: &str,
) -> Option<&'s [Stmt]> {
    match &s.block {
        Some(b) => Some(b),
        None => {
            err(
                src,
                sink,
                &s.key,
                &format!("`{what}` needs a block: expected `{what} {{ … }}`"),
            );
            None
        }
    }
}

/// The single value of `key value;`.
pub(super) fn value<'s>(
    src: &Source<'_>,
    sink: &mut Sink,
    s: &'s Stmt,
    hint: &str,
) -> Option<&'s Tok> {
    if s.block.is_some() {
        err(
            src,
            sink,
            &s.key,
            &format!(
                "`{}` takes a value, not a block: expected `{} {hint};`",
                s.key.text, s.key.text
            ),
        );
        return None;
    }
    match s.args.as_slice() {
        [v] => Some(v),
        [] => {
            err(
                src,
                sink,
                &s.key,
                &format!(
                    "`{}` needs a value: expected `{} {hint};`",
                    s.key.text, s.key.text
                ),
            );
            None
        }
        [v, extra, ..] => {
            err(
                src,
                sink,
                extra,
                &format!(
                    "expected `;` after `{} {}`, found `{}` (`{}` takes one value: {hint})",
                    s.key.text, v.text, extra.text, s.key.text
                ),
            );
            None
        }
    }
}

pub(super) fn number(
    src: &Source<'_>,
    sink: &mut Sink,
    s: &Stmt,
    min: u64,
    max: u64,
) -> Option<u64> {
    let v = value(src, sink, s, "NUMBER")?;
    match v.text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            err(
                src,
                sink,
                v,
                &format!(
                    "`{}`: `{}` is not a valid number: expected an integer from {min} to {max}",
                    s.key.text, v.text
                ),
            );
            None
        }
    }
}

pub(super) fn seconds(
    src: &Source<'_>,
    sink: &mut Sink,
    s: &Stmt,
    unit_ms: u64,
) -> Option<Duration> {
    let v = value(src, sink, s, "SECONDS")?;
    match units::parse_duration_with_unit(&v.text, unit_ms) {
        Ok(d) => Some(d),
        Err(msg) => {
            err(src, sink, v, &format!("`{}`: {msg}", s.key.text));
            None
        }
    }
}

pub(super) fn choice<T: Copy>(
    src: &Source<'_>,
    sink: &mut Sink,
    s: &Stmt,
    options: &[(&str, T)],
) -> Option<T> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let v = value(src, sink, s, &names.join("|"))?;
    match options.iter().find(|(n, _)| *n == v.text) {
        Some((_, x)) => Some(*x),
        None => {
            err(
                src,
                sink,
                v,
                &format!(
                    "`{}`: invalid value `{}`: expected one of {}",
                    s.key.text,
                    v.text,
                    names.join(", ")
                ),
            );
            None
        }
    }
}

pub(super) fn unknown(
    src: &Source<'_>,
    sink: &mut Sink,
    s: &Stmt,
    section: &str,
    expected: &[&str],
) {
    err(
        src,
        sink,
        &s.key,
        &format!(
            "unknown option `{}` in `{section}`{}: expected one of {}",
            s.key.text,
            crate::diag::did_you_mean(&s.key.text, expected),
            expected.join(", ")
        ),
    );
}
