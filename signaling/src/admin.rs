//! Account administration over the API, for accounts with the admin role: list accounts, and
//! disable one — it cannot sign in any more, and every session it has ends at once (its
//! WebSockets close within moments).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use consult_proto::api::{AccountSummary, ErrorBody, Role};
use serde_json::json;
use uuid::Uuid;

use crate::accounts;
use crate::audit::{Action, Actor};
use crate::auth::revocations::Revoked;
use crate::auth::rows;
use crate::auth::sessions::CurrentUser;
use crate::error::{ApiError, ApiPath};
use crate::state::AppState;

fn require_admin(current: &CurrentUser) -> Result<(), ApiError> {
    if current.user.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// `GET /api/v1/admin/accounts`: every account.
#[utoipa::path(get, path = "/api/v1/admin/accounts", tag = "admin",
    responses((status = 200, body = [AccountSummary]), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "not an administrator")))]
pub async fn list(
    State(state): State<AppState>,
    current: CurrentUser,
) -> Result<Json<Vec<AccountSummary>>, ApiError> {
    require_admin(&current)?;
    let accounts = accounts::list(&state.pool).await?;
    Ok(Json(
        accounts
            .into_iter()
            .map(|a| AccountSummary {
                user: a.user,
                disabled_at: a.disabled_at,
            })
            .collect(),
    ))
}

/// `POST /api/v1/admin/accounts/{id}/disable`: disable an account and end its sessions.
#[utoipa::path(post, path = "/api/v1/admin/accounts/{id}/disable", tag = "admin",
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 204), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "not an administrator, csrf_rejected, or your own account"),
              (status = 404, body = ErrorBody)))]
pub async fn disable(
    State(state): State<AppState>,
    current: CurrentUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    require_admin(&current)?;
    if id == current.user.id {
        return Err(ApiError::Denied(
            "you cannot disable your own account; ask another administrator".into(),
        ));
    }
    let now = state.clock.now();
    let mut tx = state.audit.begin().await?;
    if !accounts::disable(tx.connection(), id, now).await? {
        return Err(ApiError::NotFound("account"));
    }
    let ended = rows::revoke_user_sessions(tx.connection(), id, None, now).await?;
    tx.record(
        now,
        &Actor::User(current.user.id),
        Action::AccountDisabled,
        None,
        json!({ "account": id, "sessions_ended": ended }),
    )
    .await?;
    tx.commit().await?;
    state.revocations.announce(Revoked::User {
        user_id: id,
        except: None,
    });
    Ok(StatusCode::NO_CONTENT)
}
