//! Option haggling as a pure function: one option in, reply bytes and the next step out.
//!
//! ```text
//!   option header + data ──► answer_option(catalog) ──► reply bytes
//!                                                     └─► Continue | Transmit(export) | Close
//! ```
//! The driver (`server.rs`) only moves bytes; what to answer is decided here so that it can
//! be tested and fuzzed without sockets.

use crate::proto::{
    ClientFlags, ClientOption, MAX_PAYLOAD_BYTES, MAX_STRING_LEN, OptionHeader,
    PREFERRED_BLOCK_BYTES, encode_export_name_reply, encode_option_reply, info, opt, parse_option,
    rep,
};

/// Largest option data the server reads and parses.
pub const MAX_OPTION_BYTES: u32 = 64 * 1024;
/// Largest option data the server is willing to read and discard (answering
/// `NBD_REP_ERR_TOO_BIG`); anything larger is treated as a denial of service and the
/// session is dropped.
pub const MAX_DISCARD_OPTION_BYTES: u32 = 1024 * 1024;
/// Options accepted in one session before the server gives up on the client.
pub const MAX_OPTIONS_PER_SESSION: u32 = 256;

/// What an export looks like at the moment a client asks about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Canonical name.
    pub name: String,
    /// Human-readable description (may be empty).
    pub description: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Transmission flags (see [`crate::proto::tflag`]).
    pub flags: u16,
}

/// The exports the negotiation can see.
pub trait ExportCatalog {
    /// Resolve a requested name; the empty name means the listener's default export.
    fn resolve(&self, requested: &str) -> Option<ExportSummary>;
    /// Every export as (name, description), for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<(String, String)>;
}

/// What happens after an option was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read the next option.
    Continue,
    /// Enter the transmission phase on this export.
    Transmit(ExportSummary),
    /// Close the connection (after sending the reply, if any).
    Close,
}

/// Reply bytes to send and the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionAnswer {
    /// Bytes to write to the client (may be empty).
    pub reply: Vec<u8>,
    /// What to do next.
    pub step: Step,
}

fn error_reply(option: u32, reply_type: u32, message: &str) -> OptionAnswer {
    let mut reply = Vec::new();
    encode_option_reply(&mut reply, option, reply_type, message.as_bytes());
    OptionAnswer {
        reply,
        step: Step::Continue,
    }
}

/// Answer an option whose data length exceeded [`MAX_OPTION_BYTES`] (after the driver
/// discarded the data).
pub fn answer_too_big(option: u32) -> OptionAnswer {
    error_reply(option, rep::ERR_TOO_BIG, "option data too large")
}

fn truncate_string(s: &str) -> &str {
    if s.len() <= MAX_STRING_LEN {
        return s;
    }
    let mut end = MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Answer one option. Pure; never panics on any input.
pub fn answer_option(
    header: OptionHeader,
    data: &[u8],
    client: ClientFlags,
    shutting_down: bool,
    catalog: &dyn ExportCatalog,
) -> OptionAnswer {
    let option = header.option;
    let parsed = match parse_option(option, data) {
        Ok(p) => p,
        // EXPORT_NAME cannot carry an error reply; the only answer is to hang up.
        Err(_) if option == opt::EXPORT_NAME => {
            return OptionAnswer {
                reply: Vec::new(),
                step: Step::Close,
            };
        }
        Err(e) => return error_reply(option, rep::ERR_INVALID, &e.to_string()),
    };
    if shutting_down {
        return match parsed {
            ClientOption::Abort => abort(option),
            ClientOption::ExportName(_) => OptionAnswer {
                reply: Vec::new(),
                step: Step::Close,
            },
            _ => error_reply(option, rep::ERR_SHUTDOWN, "server shutting down"),
        };
    }
    match parsed {
        ClientOption::Abort => abort(option),
        ClientOption::List => {
            let mut reply = Vec::new();
            for (name, description) in catalog.list() {
                let name = truncate_string(&name);
                let description = truncate_string(&description);
                let mut d = Vec::with_capacity(4 + name.len() + description.len());
                d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                d.extend_from_slice(name.as_bytes());
                d.extend_from_slice(description.as_bytes());
                encode_option_reply(&mut reply, option, rep::SERVER, &d);
            }
            encode_option_reply(&mut reply, option, rep::ACK, &[]);
            OptionAnswer {
                reply,
                step: Step::Continue,
            }
        }
        ClientOption::ExportName(name) => match catalog.resolve(&name) {
            Some(export) => {
                let mut reply = Vec::new();
                encode_export_name_reply(
                    &mut reply,
                    export.size_bytes,
                    export.flags,
                    client.no_zeroes,
                );
                OptionAnswer {
                    reply,
                    step: Step::Transmit(export),
                }
            }
            None => OptionAnswer {
                reply: Vec::new(),
                step: Step::Close,
            },
        },
        ClientOption::Info { go, name, requests } => {
            let Some(export) = catalog.resolve(&name) else {
                return error_reply(
                    option,
                    rep::ERR_UNKNOWN,
                    &format!("no export named {:?}", truncate_string(&name)),
                );
            };
            let mut reply = Vec::new();
            let mut d = Vec::with_capacity(14);
            d.extend_from_slice(&info::EXPORT.to_be_bytes());
            d.extend_from_slice(&export.size_bytes.to_be_bytes());
            d.extend_from_slice(&export.flags.to_be_bytes());
            encode_option_reply(&mut reply, option, rep::INFO, &d);
            // Our constraints are the document's defaults (1 / 4096 / 32 MiB); sending them
            // unasked is allowed and saves clients a guess.
            d.clear();
            d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
            d.extend_from_slice(&1u32.to_be_bytes());
            d.extend_from_slice(&PREFERRED_BLOCK_BYTES.to_be_bytes());
            d.extend_from_slice(&MAX_PAYLOAD_BYTES.to_be_bytes());
            encode_option_reply(&mut reply, option, rep::INFO, &d);
            if requests.contains(&info::NAME) {
                d.clear();
                d.extend_from_slice(&info::NAME.to_be_bytes());
                d.extend_from_slice(truncate_string(&export.name).as_bytes());
                encode_option_reply(&mut reply, option, rep::INFO, &d);
            }
            if requests.contains(&info::DESCRIPTION) && !export.description.is_empty() {
                d.clear();
                d.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
                d.extend_from_slice(truncate_string(&export.description).as_bytes());
                encode_option_reply(&mut reply, option, rep::INFO, &d);
            }
            encode_option_reply(&mut reply, option, rep::ACK, &[]);
            OptionAnswer {
                reply,
                step: if go {
                    Step::Transmit(export)
                } else {
                    Step::Continue
                },
            }
        }
        ClientOption::Unsupported(o) => {
            let why = match o {
                opt::STARTTLS => "TLS is not offered (NOTLS mode)",
                opt::STRUCTURED_REPLY => "structured replies are not offered",
                opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                    "metadata contexts are not offered"
                }
                opt::EXTENDED_HEADERS => "extended headers are not offered",
                _ => "unknown option",
            };
            error_reply(option, rep::ERR_UNSUP, why)
        }
    }
}

fn abort(option: u32) -> OptionAnswer {
    let mut reply = Vec::new();
    encode_option_reply(&mut reply, option, rep::ACK, &[]);
    OptionAnswer {
        reply,
        step: Step::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OPTION_REPLY_MAGIC, tflag};

    struct One;
    impl ExportCatalog for One {
        fn resolve(&self, requested: &str) -> Option<ExportSummary> {
            (requested.is_empty() || requested == "vm1").then(|| ExportSummary {
                name: "vm1".into(),
                description: "test disk".into(),
                size_bytes: 1 << 30,
                flags: tflag::HAS_FLAGS | tflag::SEND_FLUSH,
            })
        }
        fn list(&self) -> Vec<(String, String)> {
            vec![("vm1".into(), "test disk".into())]
        }
    }

    /// Split a reply stream into (option, type, data) triples.
    fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert_eq!(
                u64::from_be_bytes(b[0..8].try_into().unwrap()),
                OPTION_REPLY_MAGIC
            );
            let o = u32::from_be_bytes(b[8..12].try_into().unwrap());
            let t = u32::from_be_bytes(b[12..16].try_into().unwrap());
            let n = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
            out.push((o, t, b[20..20 + n].to_vec()));
            b = &b[20 + n..];
        }
        out
    }

    fn go(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    fn ask(option: u32, data: &[u8]) -> OptionAnswer {
        let h = OptionHeader {
            option,
            length: data.len() as u32,
        };
        answer_option(h, data, ClientFlags::default(), false, &One)
    }

    #[test]
    fn go_sends_export_info_then_ack_and_transmits() {
        let a = ask(opt::GO, &go("vm1", &[info::NAME, info::DESCRIPTION]));
        let r = replies(&a.reply);
        assert_eq!(r[0].1, rep::INFO);
        assert_eq!(&r[0].2[0..2], &info::EXPORT.to_be_bytes());
        assert_eq!(&r[0].2[2..10], &(1u64 << 30).to_be_bytes());
        assert!(
            r.iter()
                .any(|x| x.2.starts_with(&info::BLOCK_SIZE.to_be_bytes()))
        );
        assert!(r.iter().any(|x| x.2 == [&[0, 1][..], b"vm1"].concat()));
        assert!(
            r.iter()
                .any(|x| x.2 == [&[0, 2][..], b"test disk"].concat())
        );
        assert_eq!(r.last().unwrap().1, rep::ACK);
        assert!(matches!(a.step, Step::Transmit(ref e) if e.name == "vm1"));
    }

    #[test]
    fn info_does_not_transmit_and_unknown_export_is_err_unknown() {
        assert_eq!(ask(opt::INFO, &go("", &[])).step, Step::Continue);
        let a = ask(opt::GO, &go("nope", &[]));
        assert_eq!(replies(&a.reply)[0].1, rep::ERR_UNKNOWN);
        assert_eq!(a.step, Step::Continue);
    }

    #[test]
    fn unknown_and_malformed_options_get_errors_and_continue() {
        for o in [
            opt::STARTTLS,
            opt::STRUCTURED_REPLY,
            opt::SET_META_CONTEXT,
            4242,
        ] {
            let a = ask(o, &[]);
            assert_eq!(replies(&a.reply)[0].1, rep::ERR_UNSUP);
            assert_eq!(a.step, Step::Continue);
        }
        let a = ask(opt::GO, &[0, 0, 0, 9, b'x']);
        assert_eq!(replies(&a.reply)[0].1, rep::ERR_INVALID);
        assert_eq!(ask(opt::EXPORT_NAME, b"nope").step, Step::Close);
    }

    #[test]
    fn list_and_abort() {
        let r = replies(&ask(opt::LIST, &[]).reply);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1, rep::SERVER);
        assert_eq!(&r[0].2[4..7], b"vm1");
        let a = ask(opt::ABORT, &[]);
        assert_eq!(replies(&a.reply)[0].1, rep::ACK);
        assert_eq!(a.step, Step::Close);
    }

    #[test]
    fn export_name_honours_no_zeroes() {
        let h = OptionHeader {
            option: opt::EXPORT_NAME,
            length: 3,
        };
        let c = ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true,
        };
        let a = answer_option(h, b"vm1", c, false, &One);
        assert_eq!(a.reply.len(), 10);
        let a = answer_option(h, b"vm1", ClientFlags::default(), false, &One);
        assert_eq!(a.reply.len(), 134);
    }

    #[test]
    fn shutting_down_refuses_options() {
        let h = OptionHeader {
            option: opt::LIST,
            length: 0,
        };
        let a = answer_option(h, &[], ClientFlags::default(), true, &One);
        assert_eq!(replies(&a.reply)[0].1, rep::ERR_SHUTDOWN);
    }

    #[test]
    fn random_option_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 40) as usize;
            let data: Vec<u8> = (0..n).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let option = (x >> 40) as u32 % 13;
            let h = OptionHeader {
                option,
                length: n as u32,
            };
            let _ = answer_option(h, &data, ClientFlags::default(), x % 7 == 0, &One);
        }
    }
}
