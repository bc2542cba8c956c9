//! Invite links and what redeeming one gives a patient.

use consult_proto::api::InviteInfo;
use uuid::Uuid;

use crate::ApiError;

/// What a patient learns when redeeming the invite. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct PatientPlace {
    /// Their participant token (to join signaling, and rejoin after a dropped connection).
    pub participant_token: String,
    /// Their participant id.
    pub participant_id: Uuid,
    /// What the invite leads to.
    pub invite: InviteInfo,
}

impl std::fmt::Debug for PatientPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientPlace")
            .field("participant_id", &self.participant_id)
            .field("invite", &self.invite)
            .finish_non_exhaustive()
    }
}

/// Split an invite link into the service base URL and the token.
///
/// ```
/// use consult_api_client::parse_invite;
/// let (base, token) = parse_invite("https://c.example/join#abc").unwrap();
/// assert_eq!((base.as_str(), token.as_str()), ("https://c.example", "abc"));
/// ```
pub fn parse_invite(url: &str) -> Result<(String, String), ApiError> {
    // The error names the link without its token, so it can be shown and logged.
    let bad = || ApiError::BadInvite(url.split('#').next().unwrap_or_default().to_owned());
    let (before, token) = url.split_once('#').ok_or_else(bad)?;
    let base = before
        .strip_suffix("/join")
        .filter(|b| b.starts_with("http://") || b.starts_with("https://"))
        .ok_or_else(bad)?;
    if token.is_empty() {
        return Err(bad());
    }
    Ok((base.to_owned(), token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_links_are_parsed_strictly() {
        assert!(parse_invite("https://c.example/join#t").is_ok());
        assert!(parse_invite("http://127.0.0.1:8080/join#t").is_ok());
        for bad in [
            "https://c.example/join",
            "https://c.example/join#",
            "ftp://c/join#t",
            "https://c.example/other#SECRET",
        ] {
            match parse_invite(bad) {
                Err(ApiError::BadInvite(shown)) => assert!(!shown.contains("SECRET"), "{shown}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
