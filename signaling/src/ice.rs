//! `GET /api/v1/ice-servers`: STUN and TURN servers, with short-lived TURN REST credentials
//! (username `expiry:user`, password base64 HMAC-SHA1 of the username under the shared secret) —
//! the scheme coturn checks with `use-auth-secret`.

use axum::extract::State;
use axum::http::request::Parts;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use consult_proto::api::{ErrorBody, IceServer, IceServers, IceTransportPolicy};
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::auth::sessions::{self, CurrentUser};
use crate::config::IceConfig;
use crate::error::ApiError;
use crate::invites;
use crate::state::AppState;

/// TURN REST credentials for `user`, valid until `expiry_unix`.
///
/// ```
/// use consult_signaling::ice::turn_credentials;
/// let (username, password) = turn_credentials("a-long-shared-secret", 1_700_000_000, "alice");
/// assert_eq!(username, "1700000000:alice");
/// assert_eq!(password.len(), 28); // base64 of a 20-byte HMAC-SHA1
/// ```
pub fn turn_credentials(shared_secret: &str, expiry_unix: i64, user: &str) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(shared_secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    (username, STANDARD.encode(mac.finalize().into_bytes()))
}

/// The servers for one client.
pub fn ice_servers(config: &IceConfig, now_unix: i64, user: &str) -> IceServers {
    let mut servers = Vec::new();
    if !config.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: config.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if let (false, Some(secret)) = (config.turn_urls.is_empty(), &config.turn_shared_secret) {
        let expiry = now_unix + config.turn_credential_ttl.as_secs() as i64;
        let (username, credential) = turn_credentials(secret, expiry, user);
        servers.push(IceServer {
            urls: config.turn_urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    IceServers {
        ice_servers: servers,
        ttl_secs: config.turn_credential_ttl.as_secs(),
        ice_transport_policy: if config.relay_only {
            IceTransportPolicy::Relay
        } else {
            IceTransportPolicy::All
        },
    }
}

/// Who asks: a signed-in user, or a patient with a participant token as bearer.
pub struct IceClient(String);

impl axum::extract::FromRequestParts<AppState> for IceClient {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match CurrentUser::from_request_parts(parts, state).await {
            Ok(current) => return Ok(Self(current.user.id.to_string())),
            Err(ApiError::Unauthenticated) => {}
            Err(e) => return Err(e),
        }
        let token = sessions::token_from_bearer(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let participant = invites::find_participant(state, &token)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        Ok(Self(participant.id.to_string()))
    }
}

/// `GET /api/v1/ice-servers`.
#[utoipa::path(get, path = "/api/v1/ice-servers", tag = "media",
    responses((status = 200, body = IceServers), (status = 401, body = ErrorBody)),
    security(("session" = []), ("bearer" = [])))]
pub async fn get(State(state): State<AppState>, client: IceClient) -> Json<IceServers> {
    Json(ice_servers(
        &state.config.ice,
        state.clock.now().unix_timestamp(),
        &client.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Same computation as coturn's `use-auth-secret` check, done independently here with
    /// `openssl`-style inputs: HMAC-SHA1("secret-of-sixteen+", "1700003600:u1").
    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        let config = IceConfig {
            stun_urls: vec!["stun:127.0.0.1:3478".into()],
            turn_urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            turn_shared_secret: Some("secret-of-sixteen+".into()),
            turn_credential_ttl: Duration::from_secs(3600),
            relay_only: true,
        };
        let servers = ice_servers(&config, 1_700_000_000, "u1");
        assert_eq!(servers.ice_servers.len(), 2);
        let turn = &servers.ice_servers[1];
        assert_eq!(turn.username.as_deref(), Some("1700003600:u1"));
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"secret-of-sixteen+").unwrap();
        mac.update(b"1700003600:u1");
        let expected = STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(turn.credential.as_deref(), Some(expected.as_str()));
        assert_eq!(servers.ttl_secs, 3600);
        assert_eq!(servers.ice_transport_policy, IceTransportPolicy::Relay);
    }

    #[test]
    fn no_servers_configured_gives_an_empty_list() {
        let servers = ice_servers(&IceConfig::default(), 0, "u");
        assert!(servers.ice_servers.is_empty());
    }
}
