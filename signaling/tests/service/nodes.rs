//! Several nodes of one deployment on one database (SQLite in the quick tier, PostgreSQL in the
//! full run): what one node writes, every node reads, and concurrent writers keep one chain.

use consult_api_client::ApiClient;
use consult_proto::api::CreateConsultationRequest;
use consult_signaling::audit_checkpoints::{self, AuditSigner};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_writing_at_once_keep_one_audit_chain_and_its_checkpoints() {
    let a = TestService::start().await;
    let b = a.another_node().await;
    let doctor = a.doctor("nodes@clinic.test").await;
    // The session made on one node is good on the other: it lives in the shared database.
    let on_b = ApiClient::new(&b.base).unwrap();
    let signer = AuditSigner::load_or_create(a.data_dir()).unwrap();
    let request = CreateConsultationRequest::default();

    // 60 creations, alternating nodes, all in flight together, with checkpoints from both
    // nodes taken while they run.
    let creations = futures_util::future::join_all((0..60).map(|i| {
        let api = if i % 2 == 0 { &doctor.api } else { &on_b };
        api.create_consultation(&doctor.token, &request)
    }));
    let checkpoints = async {
        for round in 0..10 {
            let pool = if round % 2 == 0 {
                &a.state().pool
            } else {
                &b.state().pool
            };
            audit_checkpoints::checkpoint(pool, &signer).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let (made, ()) = tokio::join!(creations, checkpoints);
    let made: Vec<_> = made.into_iter().map(|c| c.unwrap()).collect();
    audit_checkpoints::checkpoint(&b.state().pool, &signer)
        .await
        .unwrap();

    // One chain: every entry links to the one before, no gap, no fork, each creation once.
    let entries = consult_signaling::audit::verify(&a.state().pool)
        .await
        .unwrap()
        .expect("one intact chain");
    assert!(entries >= 60, "{entries} entries");
    assert_eq!(a.audited_count("consultation_created").await, 60);
    let keys = audit_checkpoints::public_keys(a.data_dir()).unwrap();
    let held = audit_checkpoints::verify_checkpoints(&b.state().pool, &keys)
        .await
        .unwrap()
        .expect("every checkpoint holds");
    assert!(held >= 2, "{held} checkpoints");

    // Each node reads what both made.
    for (i, c) in made.iter().enumerate() {
        let api = if i % 2 == 0 { &on_b } else { &doctor.api };
        assert_eq!(
            api.consultation(&doctor.token, c.id).await.unwrap().id,
            c.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invite_redeemed_on_two_nodes_at_once_goes_to_one_device() {
    let a = TestService::start().await;
    let b = a.another_node().await;
    let doctor = a.doctor("race@clinic.test").await;
    for round in 0..5 {
        let (_, invite) = doctor.create_consultation().await;
        // Twenty devices, half on each node, all at once.
        let answers = futures_util::future::join_all((0..20).map(|i| {
            let node = if i % 2 == 0 { &a } else { &b };
            node.redeem(&invite, "Patient")
        }))
        .await;
        let mut created = 0;
        for answer in answers {
            match answer.status() {
                reqwest::StatusCode::CREATED => created += 1,
                _ => assert_eq!(
                    error_code(answer).await,
                    (reqwest::StatusCode::CONFLICT, "invite_in_use".to_owned()),
                    "round {round}"
                ),
            }
        }
        assert_eq!(created, 1, "round {round}: one device holds the invite");
    }
}
