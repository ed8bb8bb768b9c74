//! Cloud accounts against the local Azure AD token endpoint of
//! `rha_azure::arm::fake`: a token for the right secret, and a clear,
//! secret-free message for a wrong secret (AADSTS7000215), an expired one
//! (AADSTS7000222), an unknown tenant (AADSTS90002), an unknown application
//! (AADSTS700016) and an unreachable authority.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rha_azure::account::{test_account, AccountError, AuthFailure, ClientSecret};
use rha_azure::arm::fake::{FakeAzure, FakeConfig, TokenMode};

const WRONG: &str = "this-is-the-wrong-secret";

async fn fake() -> FakeAzure {
    FakeAzure::start(FakeConfig::default()).await.unwrap()
}

fn auth(r: Result<rha_azure::account::TokenCheck, AccountError>) -> AuthFailure {
    match r {
        Err(AccountError::Auth(a)) => a,
        other => panic!("expected an authentication failure, got {other:?}"),
    }
}

#[tokio::test]
async fn the_right_secret_gets_a_token() {
    let f = fake().await;
    let a = f.account("prod");
    let check = test_account(&a).await.unwrap();
    assert_eq!(check.account, "prod");
    assert_eq!(check.scope, format!("{}/.default", f.url()));
    assert!(check.expires_in_secs > 3000, "{check:?}");
    assert_eq!(f.tokens_issued(), 1);
    let token_calls: Vec<_> = f
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/oauth2/v2.0/token"))
        .collect();
    assert_eq!(token_calls.len(), 1);
    assert_eq!(
        token_calls[0].path,
        format!("/{}/oauth2/v2.0/token", f.config().tenant)
    );
}

#[tokio::test]
async fn a_wrong_secret_says_to_use_the_value() {
    let f = fake().await;
    let mut a = f.account("prod");
    a.secret = ClientSecret::new(WRONG);
    let e = auth(test_account(&a).await);
    assert!(matches!(e, AuthFailure::WrongSecret { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("AADSTS7000215"), "{msg}");
    assert!(msg.contains("*value*, not its id"), "{msg}");
    assert!(msg.contains("--replace"), "{msg}");
    assert!(!msg.contains(WRONG), "the secret leaked: {msg}");
    assert!(!format!("{e:?}").contains(WRONG));
}

#[tokio::test]
async fn an_expired_secret_says_to_make_a_new_one() {
    let f = fake().await;
    f.set_token_mode(TokenMode::Expired);
    let e = auth(test_account(&f.account("prod")).await);
    assert!(matches!(e, AuthFailure::ExpiredSecret { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("AADSTS7000222"), "{msg}");
    assert!(msg.contains("has expired"), "{msg}");
    assert!(msg.contains("az ad app credential reset"), "{msg}");
}

#[tokio::test]
async fn an_unknown_tenant_names_it() {
    let f = fake().await;
    let mut a = f.account("prod");
    a.tenant_id = "00000000-0000-0000-0000-00000000dead".into();
    let e = auth(test_account(&a).await);
    assert!(matches!(e, AuthFailure::UnknownTenant { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("AADSTS90002"), "{msg}");
    assert!(
        msg.contains("00000000-0000-0000-0000-00000000dead"),
        "{msg}"
    );
    assert!(msg.contains("az account show"), "{msg}");
}

#[tokio::test]
async fn an_unknown_application_names_it() {
    let f = fake().await;
    let mut a = f.account("prod");
    a.client_id = "00000000-0000-0000-0000-00000000beef".into();
    let e = auth(test_account(&a).await);
    assert!(matches!(e, AuthFailure::UnknownApplication { .. }), "{e:?}");
    assert!(e.to_string().contains("AADSTS700016"), "{e}");
}

#[tokio::test]
async fn an_unreachable_authority_is_not_a_credentials_problem() {
    // A port nothing listens on: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = fake().await;
    let mut a = f.account("prod");
    a.authority_host = Some(format!("http://127.0.0.1:{port}"));
    let e = auth(test_account(&a).await);
    assert!(matches!(e, AuthFailure::Unreachable { .. }), "{e:?}");
    assert!(!e.is_credentials());
    assert!(e.to_string().contains("could not reach Azure AD"), "{e}");
}

/// Adds and removes running at once (threads here; two `rha cloud account`
/// processes alike) never lose one another's change: the store locks its
/// file for each read-modify-write.
#[test]
fn concurrent_adds_and_removes_lose_nothing() {
    use rha_azure::account::AccountStore;
    let dir = tempfile::tempdir().unwrap();
    let store = AccountStore::new(dir.path().join("cfg/accounts.json"));
    let account = |i: usize| rha_azure::AzureAccount {
        name: format!("acct{i}"),
        subscription_id: "11111111-2222-3333-4444-555555555555".into(),
        tenant_id: "66666666-7777-8888-9999-000000000000".into(),
        client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
        secret: ClientSecret::new(format!("secret-{i}")),
        authority_host: None,
        arm_endpoint: None,
        blob_endpoint: None,
    };
    // Some accounts to remove while others are added.
    for i in 100..108 {
        store.add(&account(i), false).unwrap();
    }
    std::thread::scope(|s| {
        for t in 0..8 {
            let store = store.clone();
            s.spawn(move || {
                for k in 0..4 {
                    store.add(&account(t * 10 + k), false).unwrap();
                }
                store.remove(&format!("acct{}", 100 + t)).unwrap();
            });
        }
    });
    let mut names: Vec<String> = store.list().unwrap().into_iter().map(|a| a.name).collect();
    names.sort();
    let mut want: Vec<String> = (0..8)
        .flat_map(|t| (0..4).map(move |k| format!("acct{}", t * 10 + k)))
        .collect();
    want.sort();
    assert_eq!(names, want);
}
