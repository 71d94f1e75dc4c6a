//! The few DER operations the certificate code does by hand: reading the algorithm of a
//! PKCS#8 key ([`super::pem`]) and re-signing a minted TBSCertificate ([`super::minted`]).
//! One reader for both.

/// The content of the TLV at the start of `input` if its tag is `tag`, and what follows.
pub(super) fn split(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, header, len) = head(input)?;
    (t == tag).then(|| input[header..].split_at(len))
}

/// Tag, header length and content length of the TLV at the start of `input`.
fn head(input: &[u8]) -> Option<(u8, usize, usize)> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    (input.len() >= header + len).then_some((tag, header, len))
}

/// The whole encodings of the TLVs that make up `content`.
pub(super) fn elements(mut content: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (_, header, len) = head(content)?;
        let (element, rest) = content.split_at(header + len);
        out.push(element);
        content = rest;
    }
    Some(out)
}

/// One DER TLV.
pub(super) fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_contents_get_a_long_form_length() {
        let content = vec![7u8; 300];
        let encoded = der(0x04, &content);
        assert_eq!(&encoded[..4], &[0x04, 0x82, 0x01, 0x2C]);
        assert_eq!(split(&encoded, 0x04), Some((&content[..], &[][..])));
        assert_eq!(split(&encoded, 0x30), None);
        assert_eq!(head(&encoded[..100]), None, "truncated");
    }
}
