//! Option haggling of the fixed newstyle handshake, without I/O: each
//! option request goes in, the reply bytes and what to do next come out.
//!
//! ```text
//!  option ──► Negotiation::answer ──► reply bytes + Next::Continue
//!                                                 | Next::StartTls   (upgrade, then tls_started)
//!                                                 | Next::Transmission(Agreed)
//!                                                 | Next::Close(reason)
//! ```
//!
//! With TLS required ("FORCEDTLS" in the specification) every option but
//! `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` is refused with
//! `NBD_REP_ERR_TLS_REQD` until TLS is up, and `NBD_OPT_EXPORT_NAME`
//! (which cannot be refused) closes the connection.

use super::proto::*;

/// What a client may learn about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The export's name.
    pub name: String,
    /// A description for humans (may be empty).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes are refused.
    pub read_only: bool,
}

/// Where the negotiation finds exports.
pub trait ExportLookup {
    /// Every export, in the order `NBD_OPT_LIST` shows them.
    fn list(&self) -> Vec<ExportInfo>;
    /// The export called `name`.
    fn find(&self, name: &str) -> Option<ExportInfo>;
}

impl ExportLookup for Vec<ExportInfo> {
    fn list(&self) -> Vec<ExportInfo> {
        self.clone()
    }
    fn find(&self, name: &str) -> Option<ExportInfo> {
        self.iter().find(|e| e.name == name).cloned()
    }
}

/// The transmission flags of an export.
pub fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    // CAN_MULTI_CONN is correct: every connection to an export writes
    // through the same volume object of this process, and a flush syncs
    // the journal and the disk for all of them.
    let mut f = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_FUA
        | NBD_FLAG_SEND_TRIM
        | NBD_FLAG_SEND_WRITE_ZEROES
        | NBD_FLAG_CAN_MULTI_CONN
        | NBD_FLAG_SEND_CACHE;
    if structured {
        f |= NBD_FLAG_SEND_DF;
    }
    if read_only {
        f |= NBD_FLAG_READ_ONLY;
    }
    f
}

/// What the client and the server agreed on when transmission starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The export chosen.
    pub export: ExportInfo,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The transmission flags sent.
    pub flags: u16,
}

/// What the connection does after an option's reply is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read the next option.
    Continue,
    /// Start TLS on the connection (the `NBD_REP_ACK` is in the reply
    /// bytes), then call [`Negotiation::tls_started`].
    StartTls,
    /// Enter the transmission phase.
    Transmission(Agreed),
    /// Close the connection, for this reason.
    Close(String),
}

/// How TLS is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS: `NBD_OPT_STARTTLS` is refused by policy.
    Off,
    /// TLS is mandatory before any other option.
    Required,
}

/// The state of one connection's option haggling.
#[derive(Debug, Clone)]
pub struct Negotiation {
    tls: TlsMode,
    tls_active: bool,
    structured: bool,
    no_zeroes: bool,
}

impl Negotiation {
    /// A negotiation with a client that sent `client` flags.
    pub fn new(tls: TlsMode, client: ClientFlags) -> Self {
        Negotiation {
            tls,
            tls_active: false,
            structured: false,
            no_zeroes: client.no_zeroes,
        }
    }

    /// TLS is now up on the connection.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
    }

    /// Whether structured replies were negotiated so far.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// The answer to an option whose data was longer than
    /// [`MAX_OPTION_BYTES`] (and was not read): an error, then close.
    pub fn too_big(&self, header: OptionHeader, out: &mut Vec<u8>) -> Next {
        let msg = format!(
            "{} with {} bytes of data: the most this server reads is {MAX_OPTION_BYTES}",
            option_name(header.option),
            header.len
        );
        encode_option_error(header.option, NBD_REP_ERR_TOO_BIG, &msg, out);
        Next::Close(msg)
    }

    /// Answers option `option` whose data decoded to `request` (or did
    /// not decode), appending the reply bytes to `out`.
    pub fn answer(
        &mut self,
        option: u32,
        request: Result<OptionRequest, InvalidOption>,
        exports: &dyn ExportLookup,
        out: &mut Vec<u8>,
    ) -> Next {
        if self.tls == TlsMode::Required && !self.tls_active {
            return match request {
                Ok(OptionRequest::StartTls) => {
                    encode_option_reply(option, NBD_REP_ACK, &[], out);
                    Next::StartTls
                }
                Ok(OptionRequest::Abort) => {
                    encode_option_reply(option, NBD_REP_ACK, &[], out);
                    Next::Close("the client aborted the negotiation".into())
                }
                Ok(OptionRequest::ExportName(_)) => Next::Close(
                    "NBD_OPT_EXPORT_NAME before TLS on a server that requires TLS".into(),
                ),
                _ => {
                    encode_option_error(
                        option,
                        NBD_REP_ERR_TLS_REQD,
                        "this server requires TLS: send NBD_OPT_STARTTLS first",
                        out,
                    );
                    Next::Continue
                }
            };
        }
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                encode_option_error(option, NBD_REP_ERR_INVALID, &e.to_string(), out);
                return Next::Continue;
            }
        };
        match request {
            OptionRequest::Abort => {
                encode_option_reply(option, NBD_REP_ACK, &[], out);
                Next::Close("the client aborted the negotiation".into())
            }
            OptionRequest::List => {
                for e in exports.list() {
                    encode_rep_server(&e.name, &e.description, out);
                }
                encode_option_reply(option, NBD_REP_ACK, &[], out);
                Next::Continue
            }
            OptionRequest::StartTls => {
                let (reply, msg) = match self.tls {
                    _ if self.tls_active => (NBD_REP_ERR_INVALID, "TLS is already active"),
                    TlsMode::Off => (
                        NBD_REP_ERR_POLICY,
                        "TLS is not configured on this server (start it with certificates)",
                    ),
                    TlsMode::Required => (NBD_REP_ERR_INVALID, "TLS is already active"),
                };
                encode_option_error(option, reply, msg, out);
                Next::Continue
            }
            OptionRequest::StructuredReply => {
                self.structured = true;
                encode_option_reply(option, NBD_REP_ACK, &[], out);
                Next::Continue
            }
            OptionRequest::ListMetaContext(m) | OptionRequest::SetMetaContext(m) => {
                if !self.structured {
                    encode_option_error(
                        option,
                        NBD_REP_ERR_INVALID,
                        "negotiate structured replies (NBD_OPT_STRUCTURED_REPLY) before metadata contexts",
                        out,
                    );
                } else if self.lookup(exports, &m.name).is_none() {
                    let msg = format!("no export named `{}`", m.name);
                    encode_option_error(option, NBD_REP_ERR_UNKNOWN, &msg, out);
                } else {
                    // No metadata context is offered: an empty list is a valid answer.
                    encode_option_reply(option, NBD_REP_ACK, &[], out);
                }
                Next::Continue
            }
            OptionRequest::ExportName(name) => match self.lookup(exports, &name) {
                Some(e) => {
                    let flags = transmission_flags(e.read_only, self.structured);
                    encode_export_name_reply(e.size, flags, self.no_zeroes, out);
                    Next::Transmission(Agreed {
                        export: e,
                        structured: self.structured,
                        flags,
                    })
                }
                None => Next::Close(format!(
                    "NBD_OPT_EXPORT_NAME for `{name}`, which is not an export"
                )),
            },
            OptionRequest::Info(r) | OptionRequest::Go(r) => {
                let Some(e) = self.lookup(exports, &r.name) else {
                    let msg = format!("no export named `{}`", r.name);
                    encode_option_error(option, NBD_REP_ERR_UNKNOWN, &msg, out);
                    return Next::Continue;
                };
                let flags = transmission_flags(e.read_only, self.structured);
                encode_rep_info(
                    option,
                    &Info::Export {
                        size: e.size,
                        flags,
                    },
                    out,
                );
                if r.requests.contains(&NBD_INFO_NAME) {
                    encode_rep_info(option, &Info::Name(e.name.clone()), out);
                }
                if r.requests.contains(&NBD_INFO_DESCRIPTION) && !e.description.is_empty() {
                    encode_rep_info(option, &Info::Description(e.description.clone()), out);
                }
                // Sent whether asked for or not (the specification allows
                // it): a client that honours it never sends unaligned requests.
                encode_rep_info(
                    option,
                    &Info::BlockSize {
                        min: MIN_BLOCK_SIZE,
                        preferred: PREFERRED_BLOCK_SIZE,
                        max: MAX_PAYLOAD,
                    },
                    out,
                );
                encode_option_reply(option, NBD_REP_ACK, &[], out);
                if option == NBD_OPT_GO {
                    Next::Transmission(Agreed {
                        export: e,
                        structured: self.structured,
                        flags,
                    })
                } else {
                    Next::Continue
                }
            }
            OptionRequest::Unknown(o) => {
                let msg = format!("option {o} ({}) is not supported", option_name(o));
                encode_option_error(option, NBD_REP_ERR_UNSUP, &msg, out);
                Next::Continue
            }
        }
    }

    /// The export `name`; the empty name is the default export, which is
    /// the only export when there is exactly one.
    fn lookup(&self, exports: &dyn ExportLookup, name: &str) -> Option<ExportInfo> {
        if name.is_empty() {
            let all = exports.list();
            return match <[ExportInfo; 1]>::try_from(all) {
                Ok([only]) => Some(only),
                Err(_) => None,
            };
        }
        exports.find(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports() -> Vec<ExportInfo> {
        vec![ExportInfo {
            name: "disk".into(),
            description: "a disk".into(),
            size: 1 << 20,
            read_only: false,
        }]
    }

    fn replies(mut b: &[u8]) -> Vec<OptionReply> {
        let mut out = Vec::new();
        while let Ok(Some((r, n))) = decode_option_reply(b) {
            out.push(r);
            b = &b[n..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    fn flags() -> ClientFlags {
        ClientFlags {
            raw: 3,
            no_zeroes: true,
        }
    }

    #[test]
    fn go_sends_export_and_block_size_then_ack() {
        let mut n = Negotiation::new(TlsMode::Off, flags());
        let mut out = Vec::new();
        let e = exports();
        assert_eq!(
            n.answer(
                NBD_OPT_STRUCTURED_REPLY,
                Ok(OptionRequest::StructuredReply),
                &e,
                &mut out
            ),
            Next::Continue
        );
        let go = OptionRequest::Go(InfoRequest {
            name: "disk".into(),
            requests: vec![NBD_INFO_BLOCK_SIZE],
        });
        let next = n.answer(NBD_OPT_GO, Ok(go), &e, &mut out);
        let Next::Transmission(a) = next else {
            panic!("{next:?}")
        };
        assert!(a.structured && a.flags & NBD_FLAG_SEND_DF != 0);
        let r = replies(&out);
        let kinds: Vec<u32> = r.iter().map(|r| r.reply).collect();
        assert_eq!(
            kinds,
            [NBD_REP_ACK, NBD_REP_INFO, NBD_REP_INFO, NBD_REP_ACK]
        );
        assert_eq!(&r[1].data[..2], &NBD_INFO_EXPORT.to_be_bytes());
        assert_eq!(&r[2].data[..2], &NBD_INFO_BLOCK_SIZE.to_be_bytes());
    }

    #[test]
    fn tls_required_refuses_everything_but_starttls() {
        let mut n = Negotiation::new(TlsMode::Required, flags());
        let e = exports();
        let mut out = Vec::new();
        assert_eq!(
            n.answer(NBD_OPT_LIST, Ok(OptionRequest::List), &e, &mut out),
            Next::Continue
        );
        assert_eq!(replies(&out)[0].reply, NBD_REP_ERR_TLS_REQD);
        out.clear();
        assert_eq!(
            n.answer(NBD_OPT_STARTTLS, Ok(OptionRequest::StartTls), &e, &mut out),
            Next::StartTls
        );
        assert_eq!(replies(&out)[0].reply, NBD_REP_ACK);
        n.tls_started();
        out.clear();
        assert_eq!(
            n.answer(NBD_OPT_LIST, Ok(OptionRequest::List), &e, &mut out),
            Next::Continue
        );
        assert_eq!(replies(&out).len(), 2);
        out.clear();
        n.answer(NBD_OPT_STARTTLS, Ok(OptionRequest::StartTls), &e, &mut out);
        assert_eq!(replies(&out)[0].reply, NBD_REP_ERR_INVALID);
    }

    #[test]
    fn unknown_export_and_option_are_errors_not_closes() {
        let mut n = Negotiation::new(TlsMode::Off, flags());
        let e = exports();
        let mut out = Vec::new();
        let go = OptionRequest::Go(InfoRequest {
            name: "nope".into(),
            requests: vec![],
        });
        assert_eq!(n.answer(NBD_OPT_GO, Ok(go), &e, &mut out), Next::Continue);
        assert_eq!(
            n.answer(77, Ok(OptionRequest::Unknown(77)), &e, &mut out),
            Next::Continue
        );
        let r = replies(&out);
        assert_eq!(r[0].reply, NBD_REP_ERR_UNKNOWN);
        assert_eq!(r[1].reply, NBD_REP_ERR_UNSUP);
        assert!(matches!(
            n.answer(
                NBD_OPT_EXPORT_NAME,
                Ok(OptionRequest::ExportName("nope".into())),
                &e,
                &mut out
            ),
            Next::Close(_)
        ));
        // The default export is the only one.
        out.clear();
        let next = n.answer(
            NBD_OPT_EXPORT_NAME,
            Ok(OptionRequest::ExportName(String::new())),
            &e,
            &mut out,
        );
        assert!(matches!(next, Next::Transmission(_)));
        assert_eq!(out.len(), 10, "NO_ZEROES: size and flags only");
    }
}
