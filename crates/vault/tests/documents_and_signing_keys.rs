//! Documents sealed for a database row, and the signing keys kept in the keyring: what is
//! sealed opens only as itself, rotation keeps it readable, and every node sharing a vault signs
//! with the same key.

use consult_vault::{SealedDocument, Vault, VaultError};
use uuid::Uuid;
use zeroize::Zeroizing;

type Made = Result<(String, Zeroizing<Vec<u8>>, String), VaultError>;

fn key_named(id: &str) -> impl FnOnce() -> Made + '_ {
    move || {
        Ok((
            id.to_owned(),
            Zeroizing::new(format!("private {id}").into_bytes()),
            format!("{{\"kid\":\"{id}\"}}"),
        ))
    }
}

#[test]
fn a_document_opens_whole_and_only_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    let sealed = vault.seal_document(id, b"sick note for Ana").unwrap();
    assert_eq!(
        &**vault.open_document(id, &sealed).unwrap(),
        b"sick note for Ana"
    );
    assert!(!sealed.ciphertext.contains("sick"));

    // Another id (a copied row), a flipped ciphertext byte, another nonce: refused.
    assert!(vault.open_document(Uuid::new_v4(), &sealed).is_err());
    let mut altered = sealed.clone();
    let mut bytes = altered.ciphertext.into_bytes();
    bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
    altered.ciphertext = String::from_utf8(bytes).unwrap();
    assert!(matches!(
        vault.open_document(id, &altered),
        Err(VaultError::Corrupt { .. })
    ));
    let other = vault.seal_document(id, b"sick note for Ana").unwrap();
    let swapped = SealedDocument {
        nonce: other.nonce,
        ..sealed.clone()
    };
    assert!(vault.open_document(id, &swapped).is_err());

    // Another vault's keyring cannot open it.
    let elsewhere = tempfile::tempdir().unwrap();
    let other_vault = Vault::open(elsewhere.path()).unwrap();
    assert!(matches!(
        other_vault.open_document(id, &sealed),
        Err(VaultError::KeyUnwrap { .. })
    ));

    let too_large = vec![0u8; consult_vault::documents::MAX_DOCUMENT_BYTES + 1];
    assert!(vault.seal_document(id, &too_large).is_err());
}

#[test]
fn rotation_rewraps_documents_kept_elsewhere_and_a_document_it_missed_no_longer_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, missed) = (Uuid::new_v4(), Uuid::new_v4());
    let (mut kept_row, missed_row) = {
        let vault = Vault::open(dir.path()).unwrap();
        (
            vault.seal_document(kept, b"kept").unwrap(),
            vault.seal_document(missed, b"missed").unwrap(),
        )
    };
    let vault = Vault::open_exclusive(dir.path()).unwrap();
    let rotation = vault
        .rotate_keys_with(|rewrap| {
            kept_row = rewrap(kept, &kept_row)?;
            Ok(1)
        })
        .unwrap();
    assert_eq!((rotation.new_version, rotation.rewrapped), (2, 1));
    assert_eq!(rotation.retired, vec![1]);
    assert_eq!(kept_row.key.kek_version, 2);
    assert_eq!(&**vault.open_document(kept, &kept_row).unwrap(), b"kept");
    assert!(matches!(
        vault.open_document(missed, &missed_row),
        Err(VaultError::KekMissing { version: 1 })
    ));
}

#[test]
fn a_rotation_whose_documents_fail_keeps_the_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::new_v4();
    let row = Vault::open(dir.path())
        .unwrap()
        .seal_document(id, b"row")
        .unwrap();
    let vault = Vault::open_exclusive(dir.path()).unwrap();
    let failed = vault.rotate_keys_with(|_| Err(VaultError::Crypto("database gone")));
    assert!(failed.is_err());
    // Version 1 was not destroyed: the row still opens.
    assert_eq!(&**vault.open_document(id, &row).unwrap(), b"row");
}

#[test]
fn nodes_sharing_a_vault_sign_with_the_one_key_the_first_made() {
    let dir = tempfile::tempdir().unwrap();
    let first = Vault::open(dir.path()).unwrap();
    let second = Vault::open(dir.path()).unwrap();
    let made = first.ensure_signing_key(key_named("k1")).unwrap();
    let seen = second
        .ensure_signing_key(|| panic!("the second node must not make another key"))
        .unwrap();
    assert_eq!(made.id, "k1");
    assert_eq!(seen, made);
    assert_eq!(
        &**made.private_key().unwrap().unwrap(),
        b"private k1".as_slice()
    );
    // Debug never prints the private key.
    assert!(!format!("{made:?}").contains("private k1"));
    assert!(!format!("{made:?}").contains(made.private.as_deref().unwrap()));
}

#[test]
fn a_rotated_signing_key_keeps_its_public_key_and_loses_its_private_key() {
    let dir = tempfile::tempdir().unwrap();
    Vault::open(dir.path())
        .unwrap()
        .ensure_signing_key(key_named("k1"))
        .unwrap();
    let vault = Vault::open_exclusive(dir.path()).unwrap();
    let current = vault.rotate_signing_key(key_named("k2")).unwrap();
    assert_eq!(current.id, "k2");
    // A key id used before is refused.
    assert!(vault.rotate_signing_key(key_named("k1")).is_err());
    // KEK rotation keeps the signing keys.
    vault.rotate_keys().unwrap();
    drop(vault);

    let keys = Vault::open(dir.path()).unwrap().signing_keys().unwrap();
    let ids: Vec<_> = keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, ["k1", "k2"]);
    assert!(keys[0].private.is_none() && keys[0].retired_at.is_some());
    assert_eq!(keys[0].public, "{\"kid\":\"k1\"}");
    assert!(keys[1].private.is_some() && keys[1].retired_at.is_none());
    let text = std::fs::read_to_string(dir.path().join("keyring.json")).unwrap();
    assert!(!text.contains(&base64_of(b"private k1")), "{text}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn a_keyring_listing_one_signing_key_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Vault::open(dir.path())
        .unwrap()
        .ensure_signing_key(key_named("k1"))
        .unwrap();
    let path = dir.path().join("keyring.json");
    let mut keyring: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let key = keyring["signing_keys"][0].clone();
    keyring["signing_keys"].as_array_mut().unwrap().push(key);
    std::fs::write(&path, keyring.to_string()).unwrap();
    let Err(e) = Vault::open(dir.path()) else {
        panic!("a keyring with a duplicated signing key opened")
    };
    assert!(e.to_string().contains("listed twice"), "{e}");
}
