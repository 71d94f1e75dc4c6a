//! Distinguished names, multi-valued RDNs included.

use yasna::models::ObjectIdentifier;

/// An attribute type a test subject may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    C,
    St,
    L,
    O,
    Ou,
    Cn,
    Dc,
    Email,
    Uid,
}

impl Attr {
    fn oid(self) -> ObjectIdentifier {
        let arcs: &[u64] = match self {
            Attr::C => &[2, 5, 4, 6],
            Attr::St => &[2, 5, 4, 8],
            Attr::L => &[2, 5, 4, 7],
            Attr::O => &[2, 5, 4, 10],
            Attr::Ou => &[2, 5, 4, 11],
            Attr::Cn => &[2, 5, 4, 3],
            Attr::Dc => &[0, 9, 2342, 19200300, 100, 1, 25],
            Attr::Email => &[1, 2, 840, 113549, 1, 9, 1],
            Attr::Uid => &[0, 9, 2342, 19200300, 100, 1, 1],
        };
        ObjectIdentifier::from_slice(arcs)
    }

    /// The short name OpenSSL's `-subj` uses.
    fn from_short(name: &str) -> Option<Attr> {
        Some(match name {
            "C" => Attr::C,
            "ST" => Attr::St,
            "L" => Attr::L,
            "O" => Attr::O,
            "OU" => Attr::Ou,
            "CN" => Attr::Cn,
            "DC" => Attr::Dc,
            "emailAddress" => Attr::Email,
            "UID" => Attr::Uid,
            _ => return None,
        })
    }
}

/// A subject: RDNs in encoding order, each with one or more attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    rdns: Vec<Vec<(Attr, String)>>,
}

impl Name {
    /// Diego's instance identity subject: the three OUs in ONE multi-valued RDN, then
    /// CN = the instance GUID (Go's `pkix.Name` puts every OU in one set).
    pub fn diego(org: &str, space: &str, app: &str, instance: &str) -> Name {
        Name {
            rdns: vec![
                vec![
                    (Attr::Ou, format!("organization:{org}")),
                    (Attr::Ou, format!("space:{space}")),
                    (Attr::Ou, format!("app:{app}")),
                ],
                vec![(Attr::Cn, instance.to_owned())],
            ],
        }
    }

    /// Only `CN=<cn>`.
    pub fn common_name(cn: &str) -> Name {
        Name {
            rdns: vec![vec![(Attr::Cn, cn.to_owned())]],
        }
    }

    /// A subject in OpenSSL's `-subj` syntax: `/OU=a+OU=b/CN=c`; `+` joins attributes into one
    /// RDN and `\` takes the next character literally.
    pub fn openssl(subj: &str) -> Name {
        let mut rdns = Vec::new();
        for rdn in split_unescaped(subj.strip_prefix('/').unwrap_or(subj), '/') {
            let mut attrs = Vec::new();
            for ava in split_unescaped(&rdn, '+') {
                let (ty, value) = ava
                    .split_once('=')
                    .unwrap_or_else(|| panic!("no `=` in `{ava}` of {subj}"));
                let attr = Attr::from_short(ty)
                    .unwrap_or_else(|| panic!("attribute type {ty} is not in the kit"));
                attrs.push((attr, unescape(value)));
            }
            rdns.push(attrs);
        }
        Name { rdns }
    }

    /// DER, strings encoded as OpenSSL encodes them by default (`C` PrintableString, `DC` and
    /// `emailAddress` IA5String, the rest UTF8String); each RDN a DER SET OF, so sorted.
    pub(crate) fn to_der(&self) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence_of(|w| {
                for rdn in &self.rdns {
                    w.next().write_set_of(|w| {
                        for (attr, value) in rdn {
                            w.next().write_sequence(|w| {
                                w.next().write_oid(&attr.oid());
                                match attr {
                                    Attr::C => w.next().write_printable_string(value),
                                    Attr::Dc | Attr::Email => w.next().write_ia5_string(value),
                                    _ => w.next().write_utf8_string(value),
                                }
                            });
                        }
                    });
                }
            });
        })
    }
}

/// Splits on `sep` where it is not escaped by `\`; the escapes stay for [`unescape`].
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == sep {
            parts.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
        if c == '\\' {
            current.extend(chars.next());
        }
    }
    parts.push(current);
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}
