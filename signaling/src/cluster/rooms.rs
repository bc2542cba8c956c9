//! The room operations a REST request needs — the waiting room, admit, decline, the end of a
//! consultation, a revoked invite's holder — run at the doctor's home, wherever it is: here
//! (or on a single node) directly, on another node as a call over the bus.

use consult_proto::api::WaitingPatient;
use uuid::Uuid;

use super::wire::{Call, Reply};
use super::Home;
use crate::consultations::{admit_patient, decline_patient};
use crate::error::ApiError;
use crate::signal::hub::AdmissionError;
use crate::state::AppState;

/// How long a call waits before asking again where the doctor's home is (while the deployment
/// settles, or the home restores the rooms or moves).
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// The doctor's waiting patients across their consultations, longest-waiting first.
pub async fn waiting_for(state: &AppState, doctor: Uuid) -> Result<Vec<WaitingPatient>, ApiError> {
    match run(state, doctor, Call::WaitingFor).await? {
        Reply::Waiting { entries } => Ok(entries),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "unexpected reply from the home node"
        ))),
    }
}

/// Admit a waiting patient (at the doctor's home, so that one patient at a time holds).
pub async fn admit(
    state: &AppState,
    doctor: Uuid,
    consultation: Uuid,
    participant: Uuid,
) -> Result<Result<(), AdmissionError>, ApiError> {
    let call = Call::Admit {
        consultation,
        participant,
    };
    admission(run(state, doctor, call).await?)
}

/// Turn a waiting patient away.
pub async fn decline(
    state: &AppState,
    doctor: Uuid,
    consultation: Uuid,
    participant: Uuid,
) -> Result<Result<(), AdmissionError>, ApiError> {
    let call = Call::Decline {
        consultation,
        participant,
    };
    admission(run(state, doctor, call).await?)
}

fn admission(reply: Reply) -> Result<Result<(), AdmissionError>, ApiError> {
    match reply {
        Reply::Admission { refused: None } => Ok(Ok(())),
        Reply::Admission {
            refused: Some(refused),
        } => Ok(Err(refused)),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "unexpected reply from the home node"
        ))),
    }
}

/// A consultation's end is committed: tell everyone in it and close its room.
pub async fn end(state: &AppState, doctor: Uuid, consultation: Uuid) -> Result<(), ApiError> {
    done(run(state, doctor, Call::End { consultation }).await?)
}

/// An invite's revocation is committed: disconnect and release whoever holds it.
pub async fn remove_holders(
    state: &AppState,
    doctor: Uuid,
    consultation: Uuid,
    invite: &str,
) -> Result<(), ApiError> {
    let call = Call::RemoveHolders {
        consultation,
        invite: invite.to_owned(),
    };
    done(run(state, doctor, call).await?)
}

/// A colleague's removal is committed: disconnect them if they are in the call.
pub async fn remove_colleague(
    state: &AppState,
    doctor: Uuid,
    consultation: Uuid,
    participant: Uuid,
) -> Result<(), ApiError> {
    let call = Call::RemoveColleague {
        consultation,
        participant,
    };
    done(run(state, doctor, call).await?)
}

fn done(reply: Reply) -> Result<(), ApiError> {
    match reply {
        Reply::Done => Ok(()),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "unexpected reply from the home node"
        ))),
    }
}

/// Run `call` at `doctor`'s home, making this node the home if no live node is (the rooms of a
/// home that died come back here from the database first). A call that may have run is never
/// sent twice: an admission whose home did not answer is answered 503.
async fn run(state: &AppState, doctor: Uuid, call: Call) -> Result<Reply, ApiError> {
    let unavailable = || {
        ApiError::unavailable(
            "cluster_unavailable",
            "the node holding this consultation cannot be reached; try again",
        )
    };
    let Some(node) = state.cluster.node() else {
        return Ok(run_here(state, doctor, call).await);
    };
    let repeatable = matches!(
        call,
        Call::WaitingFor
            | Call::End { .. }
            | Call::RemoveHolders { .. }
            | Call::RemoveColleague { .. }
    );
    let deadline = tokio::time::Instant::now() + state.config.cluster.lease * 2;
    while tokio::time::Instant::now() < deadline {
        match state.cluster.claim(state, doctor).await {
            Ok(Home::Here) => return Ok(run_here(state, doctor, call).await),
            Ok(Home::Settling) => tokio::time::sleep(RETRY_PAUSE).await,
            Ok(Home::There(home)) => match node.call(home, doctor, call.clone()).await {
                // Not run there (the home is restoring the rooms, or moved): ask again.
                Ok(Reply::NotHome) => tokio::time::sleep(RETRY_PAUSE).await,
                Ok(reply) => return Ok(reply),
                Err(_) if repeatable => tokio::time::sleep(RETRY_PAUSE).await,
                Err(_) => return Err(unavailable()),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach a doctor's home");
                return Err(unavailable());
            }
        }
    }
    Err(unavailable())
}

/// Run `call` on this node (its home, or the only node).
pub(super) async fn run_here(state: &AppState, doctor: Uuid, call: Call) -> Reply {
    match call {
        Call::WaitingFor => Reply::Waiting {
            entries: state.hub.waiting_for(doctor),
        },
        Call::Admit {
            consultation,
            participant,
        } => Reply::Admission {
            refused: admit_patient(state, doctor, consultation, participant)
                .await
                .err(),
        },
        Call::Decline {
            consultation,
            participant,
        } => Reply::Admission {
            refused: decline_patient(state, doctor, consultation, participant)
                .await
                .err(),
        },
        Call::End { consultation } => {
            crate::consultations::end_here(state, consultation).await;
            Reply::Done
        }
        Call::RemoveHolders {
            consultation,
            invite,
        } => match crate::invites::remove_holders(state, consultation, &invite).await {
            Ok(()) => Reply::Done,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), %consultation, "could not disconnect the holder of a revoked invite");
                Reply::Failed
            }
        },
        Call::RemoveColleague {
            consultation,
            participant,
        } => match crate::consultations::members::remove_colleague_here(
            state,
            consultation,
            participant,
        )
        .await
        {
            Ok(()) => Reply::Done,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), %consultation, "could not disconnect a removed colleague");
                Reply::Failed
            }
        },
    }
}
