//! `stun:`, `turn:` and `turns:` URLs (RFC 7064, RFC 7065) as the service hands them out in
//! [`crate::api::IceServer::urls`]: parsed strictly, so that the service refuses a mistyped one at
//! start-up and a client knows how to reach each server.
//!
//! ```
//! use consult_proto::ice_url::{IceUrl, Scheme, Transport};
//!
//! let url: IceUrl = "turns:turn.example.org?transport=tcp".parse().unwrap();
//! assert_eq!(url.scheme, Scheme::Turns);
//! assert_eq!(url.port, 5349);
//! assert_eq!(url.transport, Transport::Tls);
//! assert_eq!(url.address(), "turn.example.org:5349");
//!
//! let url: IceUrl = "turn:[::1]:3478?transport=tcp".parse().unwrap();
//! assert_eq!(url.transport, Transport::Tcp);
//! assert_eq!(url.address(), "[::1]:3478");
//!
//! assert!("turns:relay.example.org?transport=udp".parse::<IceUrl>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

/// The scheme of an ICE server URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `stun:` — a STUN server (server-reflexive addresses).
    Stun,
    /// `turn:` — a TURN relay over UDP or TCP.
    Turn,
    /// `turns:` — a TURN relay over TLS.
    Turns,
}

/// How a client reaches the server (the relay always talks to peers over UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// A TCP connection (RFC 6062 framing: STUN messages and ChannelData back to back).
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// `udp`, `tcp` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// A parsed `stun:`, `turn:` or `turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IceUrl {
    /// Its scheme.
    pub scheme: Scheme,
    /// The host: a name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    /// The port (3478 by default; 5349 for `turns:`).
    pub port: u16,
    /// How to reach it: `turn:` is UDP unless `?transport=tcp`; `turns:` is TLS; `stun:` is UDP.
    pub transport: Transport,
}

/// Why a URL is not a usable ICE server URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceUrlError {
    /// Not `stun:`, `turn:` or `turns:`.
    #[error("not a stun:, turn: or turns: URL")]
    Scheme,
    /// No host, or a host with characters a host name cannot have.
    #[error("the host is missing or malformed")]
    Host,
    /// The port is not a number from 1 to 65535.
    #[error("the port is not a number from 1 to 65535")]
    Port,
    /// A query other than `transport=udp` or `transport=tcp`, or one a `stun:` URL cannot have.
    #[error("unsupported query {0:?} (only ?transport=udp or ?transport=tcp on turn:, ?transport=tcp on turns:)")]
    Query(String),
}

impl IceUrl {
    /// `host:port` to connect to (IPv6 in brackets).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether this is a TURN relay (`turn:` or `turns:`).
    pub fn is_turn(&self) -> bool {
        matches!(self.scheme, Scheme::Turn | Scheme::Turns)
    }
}

impl FromStr for IceUrl {
    type Err = IceUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        // Schemes are case-insensitive (RFC 3986 §3.1).
        let (scheme, rest) = url.split_once(':').ok_or(IceUrlError::Scheme)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stun" => Scheme::Stun,
            "turns" => Scheme::Turns,
            "turn" => Scheme::Turn,
            _ => return Err(IceUrlError::Scheme),
        };
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        let transport = match (scheme, query) {
            (Scheme::Stun, None) | (Scheme::Turn, None | Some("transport=udp")) => Transport::Udp,
            (Scheme::Turn, Some("transport=tcp")) => Transport::Tcp,
            (Scheme::Turns, None | Some("transport=tcp")) => Transport::Tls,
            (_, Some(query)) => return Err(IceUrlError::Query(query.to_owned())),
        };
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None if scheme == Scheme::Turns => 5349,
            None => 3478,
            Some(digits) => match digits.parse::<u16>() {
                Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => return Err(IceUrlError::Port),
            },
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            transport,
        })
    }
}

impl fmt::Display for IceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Stun => "stun",
            Scheme::Turn => "turn",
            Scheme::Turns => "turns",
        };
        write!(f, "{scheme}:{}", self.address())?;
        if self.scheme == Scheme::Turn {
            write!(f, "?transport={}", self.transport.as_str())?;
        }
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the host checked for what a host may hold.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), IceUrlError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(IceUrlError::Host)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(IceUrlError::Host);
        }
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or(IceUrlError::Port)?),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (host.contains(':')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
    if !host_ok {
        return Err(IceUrlError::Host);
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<IceUrl, IceUrlError> {
        url.parse()
    }

    #[test]
    fn schemes_transports_and_default_ports() {
        let cases = [
            (
                "stun:stun.example.org",
                Scheme::Stun,
                "stun.example.org",
                3478,
                Transport::Udp,
            ),
            (
                "turn:127.0.0.1",
                Scheme::Turn,
                "127.0.0.1",
                3478,
                Transport::Udp,
            ),
            (
                "turn:127.0.0.1:3479?transport=udp",
                Scheme::Turn,
                "127.0.0.1",
                3479,
                Transport::Udp,
            ),
            (
                "turn:relay.example.org:443?transport=tcp",
                Scheme::Turn,
                "relay.example.org",
                443,
                Transport::Tcp,
            ),
            (
                "turns:relay.example.org",
                Scheme::Turns,
                "relay.example.org",
                5349,
                Transport::Tls,
            ),
            (
                "turns:relay.example.org:443?transport=tcp",
                Scheme::Turns,
                "relay.example.org",
                443,
                Transport::Tls,
            ),
            (
                "turn:[::1]:3478?transport=tcp",
                Scheme::Turn,
                "::1",
                3478,
                Transport::Tcp,
            ),
            (
                "turns:[2001:db8::1]",
                Scheme::Turns,
                "2001:db8::1",
                5349,
                Transport::Tls,
            ),
        ];
        for (url, scheme, host, port, transport) in cases {
            let parsed = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                (
                    parsed.scheme,
                    parsed.host.as_str(),
                    parsed.port,
                    parsed.transport
                ),
                (scheme, host, port, transport),
                "{url}"
            );
            // What it prints parses back to the same server.
            assert_eq!(parse(&parsed.to_string()), Ok(parsed.clone()), "{url}");
        }
    }

    #[test]
    fn malformed_urls_are_refused_with_the_reason() {
        let cases = [
            ("http://relay.example.org", IceUrlError::Scheme),
            ("stuns:relay.example.org", IceUrlError::Scheme),
            ("turn:", IceUrlError::Host),
            ("turn::3478", IceUrlError::Host),
            ("turn:user@relay.example.org", IceUrlError::Host),
            ("turn:relay.example.org/path", IceUrlError::Host),
            ("turn:[::1", IceUrlError::Host),
            ("turn:[not-v6]:3478", IceUrlError::Host),
            ("turn:[::1]3478", IceUrlError::Port),
            ("turn:relay.example.org:0", IceUrlError::Port),
            ("turn:relay.example.org:65536", IceUrlError::Port),
            ("turn:relay.example.org:+80", IceUrlError::Port),
            ("turn:relay.example.org:", IceUrlError::Port),
            ("turn:relay.example.org:1:2", IceUrlError::Port),
            (
                "turn:relay.example.org?transport=sctp",
                IceUrlError::Query("transport=sctp".into()),
            ),
            (
                "turns:relay.example.org?transport=udp",
                IceUrlError::Query("transport=udp".into()),
            ),
            (
                "stun:stun.example.org?transport=tcp",
                IceUrlError::Query("transport=tcp".into()),
            ),
            (
                "turn:relay.example.org?transport=tcp&x=1",
                IceUrlError::Query("transport=tcp&x=1".into()),
            ),
        ];
        for (url, error) in cases {
            assert_eq!(parse(url), Err(error), "{url}");
        }
    }
}
