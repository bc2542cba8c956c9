//! Which addresses the recorder may talk to.
//!
//! The recorder is a full ICE agent: it sends connectivity checks to every candidate a
//! participant gives it. Unchecked, a participant could make the service send STUN to any
//! address — its own loopback services, the cloud's metadata address, the hospital's internal
//! network. So the recorder pairs only with candidates whose address this policy allows, keeps
//! at most [`MAX_REMOTE_CANDIDATES`] per connection, and drops datagrams from anywhere else
//! (which also stops peer-reflexive candidates from other addresses).
//!
//! Public addresses are allowed. Loopback, private (RFC 1918, shared 100.64/10, unique local
//! fc00::/7), link-local, multicast and unspecified ones are not, unless a listed network
//! contains them (`recording.candidate_networks`). Unset, that list is the private block the
//! recorder's own media address lies in — loopback when it listens on loopback, the whole RFC
//! 1918 block of a clinic's LAN address — since only peers there can reach it anyway.

use std::net::IpAddr;

use ipnet::IpNet;

/// Remote candidates kept per recorder connection; more are ignored.
pub const MAX_REMOTE_CANDIDATES: usize = 8;

/// Why a candidate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address is not allowed.
    NotAllowed,
    /// The connection already has [`MAX_REMOTE_CANDIDATES`].
    TooMany,
    /// Not a candidate line with an IP address (an mDNS name, garbage).
    Unparsable,
}

impl Refusal {
    /// The snake_case name, as counted.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::TooMany => "too_many",
            Refusal::Unparsable => "unparsable",
        }
    }
}

/// The addresses the recorder may pair with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidatePolicy {
    listed: Vec<IpNet>,
}

/// A `recording.candidate_networks` entry that is not an address or network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recording.candidate_networks: {0:?} is not an IP address or network (like 10.0.0.0/8)")]
pub struct BadNetwork(pub String);

impl CandidatePolicy {
    /// The policy for a recorder on `media_address`, with `configured` networks (`None`: the
    /// private block `media_address` lies in, if any).
    ///
    /// ```
    /// use consult_signaling::recording::candidates::CandidatePolicy;
    ///
    /// let on_loopback = CandidatePolicy::new("127.0.0.1".parse().unwrap(), None).unwrap();
    /// assert!(on_loopback.allows("127.0.0.1".parse().unwrap()));
    /// assert!(!on_loopback.allows("10.1.2.3".parse().unwrap()));
    /// assert!(on_loopback.allows("203.0.113.9".parse().unwrap()));
    ///
    /// let on_a_lan = CandidatePolicy::new("192.168.1.20".parse().unwrap(), None).unwrap();
    /// assert!(on_a_lan.allows("192.168.40.7".parse().unwrap()));
    /// assert!(!on_a_lan.allows("127.0.0.1".parse().unwrap()));
    /// assert!(!on_a_lan.allows("169.254.169.254".parse().unwrap()));
    /// ```
    pub fn new(media_address: IpAddr, configured: Option<&[String]>) -> Result<Self, BadNetwork> {
        let listed = match configured {
            Some(entries) => entries
                .iter()
                .map(|entry| parse_network(entry).ok_or_else(|| BadNetwork(entry.clone())))
                .collect::<Result<_, _>>()?,
            None => private_block_of(media_address).into_iter().collect(),
        };
        Ok(Self { listed })
    }

    /// Whether the recorder may send to, and take datagrams from, `address`.
    pub fn allows(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        if self.listed.iter().any(|net| net.contains(&address)) {
            return true;
        }
        !restricted(address)
    }

    /// Check a trickled candidate line (`candidate:… <address> <port> typ …`) against the
    /// policy, given how many the connection already kept.
    pub fn check_line(&self, line: &str, kept: usize) -> Result<(), Refusal> {
        let address = candidate_address(line).ok_or(Refusal::Unparsable)?;
        if !self.allows(address) {
            return Err(Refusal::NotAllowed);
        }
        if kept >= MAX_REMOTE_CANDIDATES {
            return Err(Refusal::TooMany);
        }
        Ok(())
    }

    /// `sdp` without the `a=candidate` lines the policy refuses (or beyond the cap), and the
    /// refusals. Kept lines count towards `kept`.
    pub fn filter_sdp(&self, sdp: &str, kept: &mut usize) -> (String, Vec<Refusal>) {
        let mut refused = Vec::new();
        let mut out = String::with_capacity(sdp.len());
        for line in sdp.split_inclusive('\n') {
            if let Some(candidate) = line.trim_end().strip_prefix("a=")
                && candidate.starts_with("candidate:")
            {
                match self.check_line(candidate, *kept) {
                    Ok(()) => *kept += 1,
                    Err(refusal) => {
                        refused.push(refusal);
                        continue;
                    }
                }
            }
            out.push_str(line);
        }
        (out, refused)
    }
}

/// The address of a candidate line, if it is an IP address.
///
/// ```
/// use consult_signaling::recording::candidates::candidate_address;
///
/// let line = "candidate:842163049 1 udp 1677729535 198.51.100.7 54321 typ srflx raddr 0.0.0.0 rport 0";
/// assert_eq!(candidate_address(line), Some("198.51.100.7".parse().unwrap()));
/// assert_eq!(candidate_address("a=candidate:1 1 udp 1 abc.local 9 typ host"), None);
/// ```
pub fn candidate_address(line: &str) -> Option<IpAddr> {
    let line = line.trim().trim_start_matches("a=");
    let mut fields = line.strip_prefix("candidate:")?.split_ascii_whitespace();
    // foundation, component, transport, priority, address.
    fields.nth(4)?.parse().ok()
}

fn parse_network(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

const PRIVATE_BLOCKS: [&str; 6] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// The loopback or private block `address` lies in.
fn private_block_of(address: IpAddr) -> Option<IpNet> {
    let address = canonical(address);
    if address == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST) {
        return Some(IpNet::from(address));
    }
    PRIVATE_BLOCKS
        .iter()
        .filter_map(|b| b.parse::<IpNet>().ok())
        .find(|net| net.contains(&address))
}

/// Addresses the recorder never reaches unless listed.
fn restricted(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.octets()[0] == 0
                // Shared address space (carrier-grade NAT), RFC 6598.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7 and link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn public_addresses_pass_and_the_rest_only_when_listed() {
        let policy = CandidatePolicy::new(ip("203.0.113.1"), None).unwrap();
        for public in [
            "203.0.113.50",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:198.51.100.2",
        ] {
            assert!(policy.allows(ip(public)), "{public}");
        }
        for refused in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "10.0.0.1",
            "172.16.5.5",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!policy.allows(ip(refused)), "{refused}");
        }
        let listed = CandidatePolicy::new(
            ip("203.0.113.1"),
            Some(&["10.20.0.0/16".to_owned(), "169.254.1.1".to_owned()]),
        )
        .unwrap();
        assert!(listed.allows(ip("10.20.3.4")));
        assert!(!listed.allows(ip("10.21.3.4")));
        assert!(listed.allows(ip("169.254.1.1")));
        assert!(!listed.allows(ip("169.254.1.2")));
    }

    #[test]
    fn the_default_follows_the_media_address() {
        let loopback = CandidatePolicy::new(ip("127.0.0.1"), None).unwrap();
        assert!(loopback.allows(ip("127.0.0.2")));
        assert!(!loopback.allows(ip("192.168.1.1")));
        let v6_loopback = CandidatePolicy::new(ip("::1"), None).unwrap();
        assert!(v6_loopback.allows(ip("::1")));
        assert!(!v6_loopback.allows(ip("127.0.0.1")));
        let lan = CandidatePolicy::new(ip("10.4.5.6"), None).unwrap();
        assert!(lan.allows(ip("10.200.1.1")));
        assert!(!lan.allows(ip("192.168.1.1")));
        // Listed explicitly, nothing is derived.
        let none = CandidatePolicy::new(ip("127.0.0.1"), Some(&[])).unwrap();
        assert!(!none.allows(ip("127.0.0.1")));
        assert_eq!(
            CandidatePolicy::new(ip("127.0.0.1"), Some(&["10.0.0.0/33".to_owned()])),
            Err(BadNetwork("10.0.0.0/33".into()))
        );
    }

    #[test]
    fn lines_are_checked_and_capped() {
        let policy = CandidatePolicy::new(ip("127.0.0.1"), Some(&[])).unwrap();
        let public = "candidate:1 1 udp 2130706431 203.0.113.7 5000 typ host";
        assert_eq!(policy.check_line(public, 0), Ok(()));
        assert_eq!(
            policy.check_line(public, MAX_REMOTE_CANDIDATES),
            Err(Refusal::TooMany)
        );
        assert_eq!(
            policy.check_line("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", 0),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            policy.check_line("candidate:1 1 udp 2130706431 x.local 5000 typ host", 0),
            Err(Refusal::Unparsable)
        );
        assert_eq!(policy.check_line("", 0), Err(Refusal::Unparsable));
        assert_eq!(
            policy.check_line("candidate:1 1 udp", 0),
            Err(Refusal::Unparsable)
        );
    }

    #[test]
    fn refused_candidates_are_taken_out_of_an_offer() {
        let policy = CandidatePolicy::new(ip("127.0.0.1"), Some(&[])).unwrap();
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   a=candidate:1 1 udp 2130706431 10.0.0.7 5000 typ host\r\n\
                   a=candidate:2 1 udp 2130706431 203.0.113.7 5000 typ host\r\n\
                   a=candidate:3 1 udp 2130706431 169.254.169.254 80 typ host\r\n\
                   a=mid:0\r\n";
        let mut kept = 0;
        let (filtered, refused) = policy.filter_sdp(sdp, &mut kept);
        assert_eq!(
            filtered,
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
             a=candidate:2 1 udp 2130706431 203.0.113.7 5000 typ host\r\na=mid:0\r\n"
        );
        assert_eq!(refused, vec![Refusal::NotAllowed, Refusal::NotAllowed]);
        assert_eq!(kept, 1);
    }
}
