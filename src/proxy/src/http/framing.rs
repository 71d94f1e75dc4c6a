//! Finds HTTP/1 request heads that carry both `Content-Length` and `Transfer-Encoding`.
//!
//! Such a request is the classic request-smuggling probe: two parsers that pick different
//! headers disagree on where it ends. hyper resolves it as RFC 9112 §6.3 allows (chunked wins,
//! the Content-Length is dropped, the connection closes after the response), so what we would
//! forward is unambiguous; we refuse it with `400` anyway, as Envoy does by default, because
//! a client sending both is broken or probing. hyper removes the Content-Length before the
//! request reaches us, so the head has to be read on the way in: this follows the client's
//! byte stream message by message (head, then its Content-Length or chunked body) and reports
//! the index of the first ambiguous head. Whatever it cannot follow (an upgrade, CONNECT, a head
//! hyper rejects anyway) switches it off: hyper's own handling then stands alone.

/// Header names we look for, lowercase.
const NAMES: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"upgrade"];
const CONTENT_LENGTH: u8 = 1 << 0;
const TRANSFER_ENCODING: u8 = 1 << 1;
const UPGRADE: u8 = 1 << 2;
const ALL_NAMES: u8 = CONTENT_LENGTH | TRANSFER_ENCODING | UPGRADE;
const CONNECT: &[u8] = b"CONNECT ";

#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// Index of the message being read.
    index: u64,
    state: State,
    head: Head,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a request line; hyper skips blank lines here too.
    #[default]
    Start,
    /// `matched` bytes of "CONNECT " seen so far (u8::MAX: not CONNECT).
    RequestLine {
        matched: u8,
    },
    /// At the start of a header line, or of the blank line ending the head.
    LineStart,
    /// Saw CR at the start of a line.
    HeadEnd,
    /// Reading a header name: `len` bytes so far, `alive` the names it may still be.
    Name {
        len: u8,
        alive: u8,
    },
    /// Reading the value of header `name` (one of the flags, or 0 for others).
    Value {
        name: u8,
    },
    /// Content-Length body bytes left.
    Body(u64),
    /// Chunk size line: the size so far; `ext` once past the hex digits.
    ChunkSize {
        size: u64,
        ext: bool,
    },
    /// Chunk data bytes left.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkDataEnd,
    TrailerLineStart,
    TrailerLine,
    TrailerEnd,
    Off,
}

/// What the current head said about framing.
#[derive(Debug, Default, Clone, Copy)]
struct Head {
    content_length: Option<u64>,
    bad_length: bool,
    transfer_encoding: bool,
    upgrade: bool,
    connect: bool,
}

impl Framing {
    /// A watch that starts at the start of request `index` (the requests before it were read
    /// by the fast HTTP/1.1 side, which takes only heads without a body).
    pub(crate) fn from_request(index: u64) -> Self {
        Framing {
            index,
            ..Framing::default()
        }
    }

    pub(crate) fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Follows `bytes`, the next bytes from the client. Returns the index of a request whose
    /// head carried both headers (and stops: hyper closes the connection after it).
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Option<u64> {
        while !bytes.is_empty() {
            // Bodies are skipped in bulk; heads go byte by byte.
            match &mut self.state {
                State::Off => return None,
                State::Body(left) | State::ChunkData(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = match self.state {
                            State::Body(_) => self.next_message(),
                            _ => State::ChunkDataEnd,
                        };
                    }
                    continue;
                }
                _ => {}
            }
            // Bytes that cannot change the state until the next line end (or colon) are
            // skipped in bulk too: the rest of a request line or of a field value, a field name
            // that can no longer be one of ours, found by memchr's vector search. A typical
            // request head (callgrind): ~2,000 instructions byte by byte, ~1,150 with the skips
            // as a byte loop, ~1,050 with memchr.
            let skip = match self.state {
                State::RequestLine { matched }
                    if matched == u8::MAX || usize::from(matched) == CONNECT.len() =>
                {
                    Some(memchr::memchr(b'\n', bytes))
                }
                State::Value { name } if name != CONTENT_LENGTH => {
                    Some(memchr::memchr(b'\n', bytes))
                }
                State::Name { alive: 0, .. } => Some(memchr::memchr2(b':', b'\n', bytes)),
                State::TrailerLine | State::ChunkDataEnd | State::ChunkSize { ext: true, .. } => {
                    Some(memchr::memchr(b'\n', bytes))
                }
                // Every byte counts here.
                _ => None,
            };
            if let Some(next) = skip {
                // None: nothing in the rest of these bytes can change the state.
                bytes = &bytes[next?..];
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            if let Some(found) = self.step(b) {
                return Some(found);
            }
        }
        None
    }

    fn step(&mut self, b: u8) -> Option<u64> {
        self.state = match self.state {
            State::Start => match b {
                b'\r' | b'\n' => State::Start,
                _ => {
                    self.head = Head::default();
                    request_line(0, b)
                }
            },
            State::RequestLine { matched } => match b {
                b'\n' => {
                    self.head.connect = usize::from(matched) == CONNECT.len();
                    State::LineStart
                }
                _ => request_line(matched, b),
            },
            State::LineStart => match b {
                b'\r' => State::HeadEnd,
                b'\n' => return self.end_of_head(),
                // Folded lines (obs-fold): hyper rejects the head.
                b' ' | b'\t' => State::Off,
                _ => name(0, ALL_NAMES, b),
            },
            State::HeadEnd => match b {
                b'\n' => return self.end_of_head(),
                _ => State::Off,
            },
            State::Name { len, alive } => match b {
                b':' => {
                    let name = NAMES
                        .iter()
                        .enumerate()
                        .map(|(i, want)| (1u8 << i, want.len()))
                        .find(|&(flag, want)| alive & flag != 0 && want == usize::from(len))
                        .map_or(0, |(flag, _)| flag);
                    self.saw(name);
                    State::Value { name }
                }
                // A line without a colon: hyper rejects the head.
                b'\n' => State::Off,
                _ => name(len, alive, b),
            },
            State::Value { name } => match b {
                b'\n' => State::LineStart,
                _ => {
                    if name == CONTENT_LENGTH {
                        self.length_digit(b);
                    }
                    State::Value { name }
                }
            },
            State::ChunkSize { size, ext } => match b {
                b'\n' if size == 0 => State::TrailerLineStart,
                b'\n' => State::ChunkData(size),
                _ if ext => State::ChunkSize { size, ext },
                b';' | b' ' | b'\t' | b'\r' => State::ChunkSize { size, ext: true },
                _ => match (b as char).to_digit(16) {
                    Some(d) => match size.checked_mul(16).map(|s| s + u64::from(d)) {
                        Some(size) => State::ChunkSize { size, ext },
                        None => State::Off,
                    },
                    None => State::Off,
                },
            },
            State::ChunkDataEnd => match b {
                b'\n' => State::ChunkSize {
                    size: 0,
                    ext: false,
                },
                _ => State::ChunkDataEnd,
            },
            State::TrailerLineStart => match b {
                b'\r' => State::TrailerEnd,
                b'\n' => self.next_message(),
                _ => State::TrailerLine,
            },
            State::TrailerLine => match b {
                b'\n' => State::TrailerLineStart,
                _ => State::TrailerLine,
            },
            State::TrailerEnd => match b {
                b'\n' => self.next_message(),
                _ => State::Off,
            },
            // Handled in bulk by `feed`.
            State::Body(_) | State::ChunkData(_) | State::Off => self.state,
        };
        None
    }

    fn saw(&mut self, name: u8) {
        match name {
            CONTENT_LENGTH => {
                // Several Content-Length fields: hyper accepts only equal ones; the last wins
                // here, which matters only for a head hyper rejects.
                self.head.content_length = Some(0);
            }
            TRANSFER_ENCODING => self.head.transfer_encoding = true,
            UPGRADE => self.head.upgrade = true,
            _ => {}
        }
    }

    fn length_digit(&mut self, b: u8) {
        match b {
            b'0'..=b'9' => {
                let so_far = self.head.content_length.unwrap_or(0);
                match so_far
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(b - b'0')))
                {
                    Some(n) => self.head.content_length = Some(n),
                    None => self.head.bad_length = true,
                }
            }
            b' ' | b'\t' | b'\r' => {}
            _ => self.head.bad_length = true,
        }
    }

    fn end_of_head(&mut self) -> Option<u64> {
        let head = self.head;
        if head.content_length.is_some() && head.transfer_encoding {
            self.state = State::Off;
            return Some(self.index);
        }
        self.state = if head.upgrade || head.connect || head.bad_length {
            // After an upgrade or CONNECT the bytes may stop being HTTP; a bad length is
            // refused by hyper, which closes the connection.
            State::Off
        } else if head.transfer_encoding {
            State::ChunkSize {
                size: 0,
                ext: false,
            }
        } else {
            match head.content_length {
                Some(n) if n > 0 => State::Body(n),
                _ => return self.finish_message(),
            }
        };
        None
    }

    fn finish_message(&mut self) -> Option<u64> {
        self.state = self.next_message();
        None
    }

    fn next_message(&mut self) -> State {
        self.index += 1;
        State::Start
    }
}

fn request_line(matched: u8, b: u8) -> State {
    let matched = match CONNECT.get(usize::from(matched)) {
        Some(&want) if want == b => matched + 1,
        // All of "CONNECT " seen: the rest of the line does not matter.
        None if usize::from(matched) == CONNECT.len() => matched,
        _ => u8::MAX,
    };
    State::RequestLine { matched }
}

fn name(len: u8, alive: u8, b: u8) -> State {
    let b = b.to_ascii_lowercase();
    let mut still = 0;
    for (i, want) in NAMES.iter().enumerate() {
        let flag = 1u8 << i;
        if alive & flag != 0 && want.get(usize::from(len)) == Some(&b) {
            still |= flag;
        }
    }
    State::Name {
        len: len.saturating_add(1),
        alive: still,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` whole and byte by byte; both must agree.
    fn ambiguous_index(stream: &[u8]) -> Option<u64> {
        let mut whole = Framing::default();
        let at_once = whole.feed(stream);
        let mut bytewise = Framing::default();
        let mut one_by_one = None;
        for b in stream {
            if let Some(i) = bytewise.feed(std::slice::from_ref(b)) {
                one_by_one = Some(i);
                break;
            }
        }
        assert_eq!(
            at_once, one_by_one,
            "split reads must not change the result"
        );
        at_once
    }

    #[test]
    fn plain_requests_with_bodies_are_not_flagged() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n\
            GET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(ambiguous_index(stream), None);
    }

    #[test]
    fn both_headers_in_either_order_flag_that_request() {
        let cl_first =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(ambiguous_index(cl_first), Some(0));
        let te_first = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n0\r\n\r\n";
        assert_eq!(ambiguous_index(te_first), Some(1));
    }

    #[test]
    fn header_lookalikes_inside_bodies_are_skipped() {
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(ambiguous_index(&stream), None);
        stream.extend_from_slice(
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(ambiguous_index(&stream), Some(3));
    }

    #[test]
    fn an_upgrade_or_connect_switches_the_watch_off() {
        let mut f = Framing::default();
        assert_eq!(
            f.feed(b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            None
        );
        assert!(f.is_off());
        let mut f = Framing::default();
        assert_eq!(
            f.feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            None
        );
        assert!(f.is_off());
        let mut f = Framing::default();
        f.feed(b"CONNECTED / HTTP/1.1\r\n\r\n");
        assert!(!f.is_off());
    }

    #[test]
    fn similar_header_names_do_not_count() {
        let stream = b"POST / HTTP/1.1\r\nContent-Lengthy: 4\r\nX-Transfer-Encoding: chunked\r\nTransfer-Encodin: x\r\n\r\n\
            GET / HTTP/1.1\r\n\r\n";
        assert_eq!(ambiguous_index(stream), None);
    }
}
