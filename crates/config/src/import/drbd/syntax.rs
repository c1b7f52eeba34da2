//! drbd.conf's syntax: tokens (bare or quoted words, braces, semicolons, `#` comments)
//! and the statements they form, `keyword args… ;` or `keyword args… { statements }`.

use crate::diag::{Sink, Source};

/// A token: its text (quotes removed) and byte offset.
#[derive(Debug, Clone)]
pub(super) struct Tok {
    pub(super) text: String,
    pub(super) at: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Word,
    Open,
    Close,
    Semi,
}

fn tokenize(src: &Source<'_>, sink: &mut Sink) -> Option<Vec<(Kind, Tok)>> {
    let text = src.text;
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '{' | '}' | ';' => {
                let kind = match c {
                    '{' => Kind::Open,
                    '}' => Kind::Close,
                    _ => Kind::Semi,
                };
                out.push((
                    kind,
                    Tok {
                        text: c.to_string(),
                        at: i,
                    },
                ));
            }
            '"' => {
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                s.push(n);
                            }
                        }
                        '\n' => break,
                        c => s.push(c),
                    }
                }
                if !closed {
                    sink.push(src.error(
                        i..i,
                        "unterminated string: expected a closing `\"` on the same line",
                    ));
                    return None;
                }
                out.push((Kind::Word, Tok { text: s, at: i }));
            }
            _ => {
                let mut s = String::from(c);
                while let Some(&(_, n)) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push((Kind::Word, Tok { text: s, at: i }));
            }
        }
    }
    Some(out)
}

/// `keyword args… ;` or `keyword args… { stmts }`.
#[derive(Debug, Clone)]
pub(super) struct Stmt {
    pub(super) key: Tok,
    pub(super) args: Vec<Tok>,
    pub(super) block: Option<Vec<Stmt>>,
}

struct Parser<'t> {
    toks: &'t [(Kind, Tok)],
    pos: usize,
    end: usize,
}

impl Parser<'_> {
    fn block(
        &mut self,
        src: &Source<'_>,
        sink: &mut Sink,
        opener: Option<&Tok>,
    ) -> Option<Vec<Stmt>> {
        let mut stmts = Vec::new();
        loop {
            let Some((kind, tok)) = self.toks.get(self.pos) else {
                if let Some(o) = opener {
                    let (line, col) = src.position(o.at);
                    sink.push(src.error(self.end..self.end, format!("unexpected end of file: expected `}}` closing the block opened at line {line}, column {col}")));
                    return None;
                }
                return Some(stmts);
            };
            match kind {
                Kind::Close => {
                    if opener.is_none() {
                        sink.push(src.error(tok.at..tok.at, "unexpected `}`: no block is open"));
                        return None;
                    }
                    self.pos += 1;
                    return Some(stmts);
                }
                Kind::Semi => {
                    // Empty statement: DRBD tolerates stray semicolons.
                    self.pos += 1;
                }
                Kind::Open => {
                    sink.push(src.error(
                        tok.at..tok.at,
                        "unexpected `{`: expected a keyword before it",
                    ));
                    return None;
                }
                Kind::Word => {
                    let key = tok.clone();
                    self.pos += 1;
                    let mut args = Vec::new();
                    loop {
                        match self.toks.get(self.pos) {
                            Some((Kind::Word, t)) => {
                                args.push(t.clone());
                                self.pos += 1;
                            }
                            Some((Kind::Semi, _)) => {
                                self.pos += 1;
                                stmts.push(Stmt {
                                    key,
                                    args,
                                    block: None,
                                });
                                break;
                            }
                            Some((Kind::Open, t)) => {
                                let t = t.clone();
                                self.pos += 1;
                                let inner = self.block(src, sink, Some(&t))?;
                                stmts.push(Stmt {
                                    key,
                                    args,
                                    block: Some(inner),
                                });
                                break;
                            }
                            Some((Kind::Close, t)) => {
                                let mut words = vec![key.text.clone()];
                                words.extend(args.iter().map(|a| a.text.clone()));
                                sink.push(src.error(
                                    t.at..t.at,
                                    format!("expected `;` after `{}`, found `}}`", words.join(" ")),
                                ));
                                return None;
                            }
                            None => {
                                sink.push(src.error(
                                    self.end..self.end,
                                    format!(
                                        "unexpected end of file: expected `;` or `{{` after `{}`",
                                        key.text
                                    ),
                                ));
                                return None;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The statements of the whole file; `None` after a syntax error (reported to `sink`).
pub(super) fn statements(src: &Source<'_>, sink: &mut Sink) -> Option<Vec<Stmt>> {
    let toks = tokenize(src, sink)?;
    let mut p = Parser {
        toks: &toks,
        pos: 0,
        end: src.text.len(),
    };
    p.block(src, sink, None)
}
