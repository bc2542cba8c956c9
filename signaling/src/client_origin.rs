//! Who is on the other end of a request: the client's address and whether it reached us over
//! HTTPS, as the socket says — or, behind reverse proxies listed in `trusted_proxies`, as those
//! proxies report in `Forwarded` (RFC 7239) or `X-Forwarded-For` / `X-Forwarded-Proto`.
//!
//! Only hops we trust are believed: the socket's peer must be a trusted proxy for any header to
//! count, and the chain is read from the right (the hop nearest to us) leftwards, stopping at the
//! first address that is not a trusted proxy — that is the client. Whatever a client writes into
//! the headers itself sits further left and is never reached. A value that cannot be read ends
//! the walk at the proxy that passed it on.
//!
//! ```
//! use consult_signaling::client_origin::TrustedProxies;
//! use axum::http::HeaderMap;
//!
//! let proxies = TrustedProxies::parse(&["10.0.0.0/8".to_owned()]).unwrap();
//! let mut headers = HeaderMap::new();
//! // The client forged the first entry; the proxy appended the address it saw.
//! headers.insert("x-forwarded-for", "203.0.113.66, 198.51.100.7".parse().unwrap());
//! headers.insert("x-forwarded-proto", "https".parse().unwrap());
//! let origin = proxies.origin("10.0.0.2".parse().unwrap(), &headers, false);
//! assert_eq!(origin.address.to_string(), "198.51.100.7");
//! assert!(origin.https);
//! // From a hop we do not trust, the headers mean nothing.
//! let direct = proxies.origin("192.0.2.1".parse().unwrap(), &headers, false);
//! assert_eq!(direct.address.to_string(), "192.0.2.1");
//! assert!(!direct.https);
//! ```

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::error::ApiError;
use crate::state::AppState;

/// The reverse proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `trusted_proxies` entry that is neither an address nor a network.
#[derive(Debug, thiserror::Error)]
#[error("trusted_proxies: {0:?} is not an IP address or network (like 10.0.0.0/8)")]
pub struct BadProxyEntry(pub String);

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOrigin {
    /// The client's address.
    pub address: IpAddr,
    /// Whether the client's own connection was HTTPS (to us, or to the edge proxy).
    pub https: bool,
}

/// One hop of a forwarding chain: the address it names and the scheme it reports, if any.
struct Hop {
    address: Option<IpAddr>,
    https: Option<bool>,
}

impl TrustedProxies {
    /// From `trusted_proxies` entries: addresses (`192.0.2.1`, `::1`) or networks
    /// (`10.0.0.0/8`).
    pub fn parse(entries: &[String]) -> Result<Self, BadProxyEntry> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadProxyEntry(entry.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `address` is one of the listed proxies.
    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The origin of a request whose socket peer is `peer`; `tls`: whether we terminate TLS.
    pub fn origin(&self, peer: IpAddr, headers: &HeaderMap, tls: bool) -> ClientOrigin {
        let peer = canonical(peer);
        let mut origin = ClientOrigin {
            address: peer,
            https: tls,
        };
        if !self.trusts(peer) {
            return origin;
        }
        let (hops, scheme) = forwarded_hops(headers);
        if let Some(https) = scheme {
            origin.https = https;
        }
        // From the nearest hop leftwards, while each address is one of our proxies.
        for hop in hops.iter().rev() {
            let Some(address) = hop.address else {
                break;
            };
            origin.address = canonical(address);
            if let Some(https) = hop.https {
                origin.https = https;
            }
            if !self.trusts(origin.address) {
                break;
            }
        }
        origin
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so one list serves dual-stack sockets.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The chain from `Forwarded` if present (each element with its own scheme), else from
/// `X-Forwarded-For` with the scheme of `X-Forwarded-Proto` (which the edge proxy sets: its first
/// value), left to right.
fn forwarded_hops(headers: &HeaderMap) -> (Vec<Hop>, Option<bool>) {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().map(str::to_owned).unwrap_or_default())
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        let hops = forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                let mut hop = Hop {
                    address: None,
                    https: None,
                };
                for pair in element.split(';') {
                    let Some((key, value)) = pair.trim().split_once('=') else {
                        continue;
                    };
                    let value = value.trim().trim_matches('"');
                    match key.trim().to_ascii_lowercase().as_str() {
                        "for" => hop.address = parse_node(value),
                        "proto" => hop.https = Some(value.eq_ignore_ascii_case("https")),
                        _ => {}
                    }
                }
                hop
            })
            .collect();
        return (hops, None);
    }
    let hops: Vec<Hop> = values("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|entry| Hop {
            address: parse_node(entry.trim()),
            https: None,
        })
        .collect();
    let scheme = values("x-forwarded-proto").first().map(|proto| {
        let first = proto.split(',').next().unwrap_or_default().trim();
        first.eq_ignore_ascii_case("https")
    });
    (hops, scheme)
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, or
/// `[2001:db8::1]:4711`. Obfuscated or `unknown` nodes are `None`.
fn parse_node(value: &str) -> Option<IpAddr> {
    value
        .parse::<IpAddr>()
        .ok()
        .or_else(|| value.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            value
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .and_then(|v| v.parse().ok())
        })
}

impl FromRequestParts<AppState> for ClientOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no peer address on the request")))?;
        Ok(state
            .trusted_proxies
            .origin(peer.ip(), &parts.headers, state.config.tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_trusted_hops_are_believed_walking_from_the_right() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.10".into()]).unwrap();
        // Two proxies: the edge (192.0.2.10) saw 198.51.100.7; the client forged 203.0.113.66.
        let chain = headers(&[("x-forwarded-for", "203.0.113.66, 198.51.100.7, 192.0.2.10")]);
        let origin = proxies.origin(ip("10.1.2.3"), &chain, false);
        assert_eq!(origin.address, ip("198.51.100.7"));
        // The same headers straight from a client: ignored.
        assert_eq!(
            proxies.origin(ip("198.51.100.99"), &chain, false).address,
            ip("198.51.100.99")
        );
        // Split over two header lines, as proxies may send.
        let split = headers(&[
            ("x-forwarded-for", "203.0.113.66"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            proxies.origin(ip("10.1.2.3"), &split, false).address,
            ip("198.51.100.7")
        );
        // Nothing forwarded: the proxy itself.
        assert_eq!(
            proxies
                .origin(ip("10.1.2.3"), &HeaderMap::new(), false)
                .address,
            ip("10.1.2.3")
        );
        // An unreadable entry stops the walk at the proxy that passed it on.
        let garbage = headers(&[("x-forwarded-for", "198.51.100.7, not-an-ip")]);
        assert_eq!(
            proxies.origin(ip("10.1.2.3"), &garbage, false).address,
            ip("10.1.2.3")
        );
    }

    #[test]
    fn forwarded_headers_with_ports_ipv6_and_schemes() {
        let proxies = TrustedProxies::parse(&["::1".into(), "127.0.0.1".into()]).unwrap();
        let forwarded = headers(&[(
            "forwarded",
            r#"for="[2001:db8::7]:4711";proto=https, for=127.0.0.1;proto=http"#,
        )]);
        let origin = proxies.origin(ip("::1"), &forwarded, false);
        assert_eq!(origin.address, ip("2001:db8::7"));
        assert!(origin.https, "the client's own connection was https");
        let v4 = headers(&[("forwarded", "for=192.0.2.60:5000;proto=http")]);
        let origin = proxies.origin(ip("::ffff:127.0.0.1"), &v4, true);
        assert_eq!(origin.address, ip("192.0.2.60"));
        assert!(!origin.https);
        let obfuscated = headers(&[("forwarded", "for=_hidden, for=unknown")]);
        assert_eq!(
            proxies.origin(ip("127.0.0.1"), &obfuscated, false).address,
            ip("127.0.0.1")
        );
        let proto = headers(&[
            ("x-forwarded-for", "192.0.2.60"),
            ("x-forwarded-proto", "https"),
        ]);
        assert!(proxies.origin(ip("127.0.0.1"), &proto, false).https);
        assert!(
            !TrustedProxies::default()
                .origin(ip("127.0.0.1"), &proto, false)
                .https,
            "no trusted proxies: no header counts"
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.example".into()]).is_err());
        assert!(TrustedProxies::parse(&["10.0.0.0/8".into(), " ::1 ".into()]).is_ok());
    }
}
