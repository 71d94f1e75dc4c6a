//! The PROXY protocol version 2 header (HAProxy's `proxy-protocol.txt`, section 2.2) that a tcp
//! listener with `proxy_protocol: true` sends to the app before the first client byte, so the
//! app learns the caller's address although its TCP peer is the sidecar.
//!
//! Only what a TLS terminator in front of one app needs: the binary form, command `PROXY`,
//! transport `STREAM` over IPv4 or IPv6, no TLVs.

use std::net::{IpAddr, SocketAddr};

/// The fixed 12-byte signature that opens every v2 header.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2 (high nibble) and command PROXY (low nibble).
const VERSION_2_PROXY: u8 = 0x21;
/// Address family (high nibble) and transport protocol STREAM (low nibble).
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;

/// The header for a connection from `client` accepted on `listener` (the address the client
/// connected to). Mixed families (an IPv4 client on a dual-stack socket) are sent as IPv4 when
/// both are IPv4 or IPv4-mapped, otherwise both as IPv6.
pub fn header(client: SocketAddr, listener: SocketAddr) -> Vec<u8> {
    let (src, dst) = (client.ip().to_canonical(), listener.ip().to_canonical());
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_2_PROXY);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(TCP_OVER_IPV4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(TCP_OVER_IPV6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&listener.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_connection_is_28_bytes_with_addresses_then_ports_in_network_order() {
        let client: SocketAddr = "192.0.2.10:51234".parse().unwrap();
        let listener: SocketAddr = "10.255.0.5:8443".parse().unwrap();
        #[rustfmt::skip]
        let expected: [u8; 28] = [
            // signature
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            0x21,                   // v2, PROXY
            0x11,                   // AF_INET, STREAM
            0x00, 0x0C,             // 12 address bytes follow
            192, 0, 2, 10,          // source: the client
            10, 255, 0, 5,          // destination: the listener
            0xC8, 0x22,             // 51234
            0x20, 0xFB,             // 8443
        ];
        assert_eq!(header(client, listener), expected);
    }

    #[test]
    fn an_ipv6_connection_is_52_bytes() {
        let client: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        let listener: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        let h = header(client, listener);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[12..16], [0x21, 0x21, 0x00, 0x24]);
        #[rustfmt::skip]
        let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
        assert_eq!(h[16..32], src);
        assert_eq!(h[32..47], src[..15]);
        assert_eq!(h[47], 0x02);
        assert_eq!(h[48..52], [0x9C, 0x40, 0x01, 0xBB]);
    }

    #[test]
    fn ipv4_mapped_addresses_on_a_dual_stack_socket_are_sent_as_ipv4() {
        let client: SocketAddr = "[::ffff:192.0.2.10]:51234".parse().unwrap();
        let listener: SocketAddr = "[::ffff:10.255.0.5]:8443".parse().unwrap();
        let plain = header(
            "192.0.2.10:51234".parse().unwrap(),
            "10.255.0.5:8443".parse().unwrap(),
        );
        assert_eq!(header(client, listener), plain);
    }

    #[test]
    fn mixed_families_are_both_sent_as_ipv6() {
        let client: SocketAddr = "192.0.2.10:1".parse().unwrap();
        let listener: SocketAddr = "[2001:db8::2]:2".parse().unwrap();
        let h = header(client, listener);
        assert_eq!(h[13], 0x21);
        #[rustfmt::skip]
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 10];
        assert_eq!(h[16..32], mapped);
    }
}
