//! PROXY protocol v2 headers for arbitrary address pairs: the signature, version/command and
//! family bytes are right, the length field counts exactly the bytes that follow, and the
//! addresses and ports read back to what was encoded (IPv4-mapped addresses as IPv4).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tls_sidecar::proxy_protocol::{SIGNATURE, header};

fn addr(bytes: &[u8], v6: bool) -> SocketAddr {
    let port = u16::from_be_bytes([bytes[16], bytes[17]]);
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).unwrap()))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 37 {
        return;
    }
    let client = addr(&data[1..19], data[0] & 1 == 1);
    let listener = addr(&data[19..37], data[0] & 2 == 2);
    let h = header(client, listener);
    assert_eq!(h[..12], SIGNATURE);
    assert_eq!(h[12], 0x21, "version 2, command PROXY");
    let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
    assert_eq!(len, h.len() - 16, "the length field counts what follows");
    let (src, dst) = (client.ip().to_canonical(), listener.ip().to_canonical());
    let body = &h[16..];
    match h[13] {
        0x11 => {
            assert!(src.is_ipv4() && dst.is_ipv4());
            assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&body[..4]).unwrap()), src);
            assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&body[4..8]).unwrap()), dst);
            assert_eq!(body[8..10], client.port().to_be_bytes());
            assert_eq!(body[10..12], listener.port().to_be_bytes());
        }
        0x21 => {
            assert!(src.is_ipv6() || dst.is_ipv6());
            let a = Ipv6Addr::from(<[u8; 16]>::try_from(&body[..16]).unwrap());
            let b = Ipv6Addr::from(<[u8; 16]>::try_from(&body[16..32]).unwrap());
            assert_eq!(IpAddr::V6(a).to_canonical(), src);
            assert_eq!(IpAddr::V6(b).to_canonical(), dst);
            assert_eq!(body[32..34], client.port().to_be_bytes());
            assert_eq!(body[34..36], listener.port().to_be_bytes());
        }
        other => panic!("family byte {other:#x}"),
    }
});
