//! The Key Vault emulator at the HTTP level: what the SDK tests (hub, conformance) do not reach.

use keyfleet_testkit::keyvault::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, KeyVaultConfig, KeyVaultEmulator, KeyVaultHandle,
    ManagedIdentity, Outcome, Permission, Principal,
};
use serde_json::Value;

const API: &str = "api-version=2025-07-01";

fn form<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k.as_ref(), v.as_ref());
    }
    out.finish()
}

fn post_form<K: AsRef<str>, V: AsRef<str>>(
    http: &reqwest::Client,
    url: &str,
    pairs: &[(K, V)],
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
}

fn client(handle: &KeyVaultHandle) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = reqwest::Certificate::from_pem_bundle(handle.ca_pem().as_bytes()).expect("ca pem");
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .expect("client")
}

async fn token(
    http: &reqwest::Client,
    handle: &KeyVaultHandle,
    client_id: &str,
    secret: &str,
) -> reqwest::Response {
    let url = format!("{}{}/oauth2/v2.0/token", handle.authority_url(), handle.tenant());
    post_form(
        http,
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("scope", "https://vault.azure.net/.default"),
        ],
    )
    .send()
    .await
    .expect("token call")
}

async fn bearer(http: &reqwest::Client, handle: &KeyVaultHandle, client_id: &str, secret: &str) -> String {
    let body: Value = token(http, handle, client_id, secret)
        .await
        .json()
        .await
        .expect("json");
    body["access_token"].as_str().expect("access_token").to_owned()
}

#[tokio::test]
async fn challenge_token_and_paging() {
    let handle = KeyVaultEmulator::start(KeyVaultConfig::default())
        .await
        .expect("start");
    let http = client(&handle);
    let vault = handle.vault_url().as_str();

    // Unauthenticated: the challenge, before anything else is looked at.
    let response = http
        .get(format!("{vault}secrets/nope/"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"{}keyfleet-test\", resource=\"https://vault.azure.net\"",
            handle.authority_url()
        )
    );

    // Wrong secret: Entra's error shape.
    let refused = token(&http, &handle, DEFAULT_CLIENT_ID, "wrong").await;
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"][0], 7000215);

    let token = bearer(&http, &handle, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET).await;
    for i in 0..30 {
        handle
            .set_secret(&format!("s{i:02}"), "v", &[("i", &i.to_string())])
            .expect("set");
    }
    // Missing api-version → 400; maxresults above 25 → 400.
    let response = http
        .get(format!("{vault}secrets"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list");
    assert_eq!(response.status(), 400);
    let response = http
        .get(format!("{vault}secrets?{API}&maxresults=26"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list");
    assert_eq!(response.status(), 400);

    // Paging with an empty first page, following nextLink until none.
    handle.faults().empty_first_page(true);
    let mut url = format!("{vault}secrets?{API}&maxresults=7");
    let (mut pages, mut names) = (0, Vec::new());
    loop {
        let page: Value = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("page")
            .json()
            .await
            .expect("json");
        pages += 1;
        for item in page["value"].as_array().expect("array") {
            assert!(item.get("value").is_none(), "list items carry no value");
            names.push(
                item["id"]
                    .as_str()
                    .expect("id")
                    .rsplit('/')
                    .next()
                    .expect("name")
                    .to_owned(),
            );
        }
        match page["nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(names.len(), 30);
    assert_eq!(pages, 1 + 5, "an empty first page, then 30 items by 7");
    let counters = handle.counters();
    assert_eq!(counters.ok_by("list", DEFAULT_CLIENT_ID), 6);
    assert_eq!(counters.outcome("list", Outcome::Error), 2);
    assert_eq!(counters.outcome("get", Outcome::Unauthorized), 1);

    // The admin route serves the same counters and takes faults.
    let admin = handle.authority_url();
    let json: Value = http
        .get(format!("{admin}_emulator/counters"))
        .send()
        .await
        .expect("counters")
        .json()
        .await
        .expect("json");
    assert!(
        json["calls"]
            .as_array()
            .expect("rows")
            .iter()
            .any(|r| r["operation"] == "list" && r["count"] == 6)
    );
    let response = http
        .post(format!("{admin}_emulator/faults"))
        .json(&serde_json::json!({"throttleNext": 1, "retryAfterSeconds": 2}))
        .send()
        .await
        .expect("faults");
    assert_eq!(response.status(), 200);
    let throttled = http
        .get(format!("{vault}secrets/s01/?{API}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "2");
    let body: Value = throttled.json().await.expect("json");
    assert_eq!(body["error"]["code"], "Throttled");
    let served = http
        .get(format!("{vault}secrets/S01/?{API}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(served.status(), 200, "names are case-insensitive");
    handle.shutdown().await;
}

#[tokio::test]
async fn permissions_disabled_versions_tokens() {
    let config = KeyVaultConfig {
        principals: vec![
            Principal::with_secret("reader", "reader-secret").permissions(&[Permission::Get]),
            Principal::with_secret("lister", "lister-secret").permissions(&[Permission::List]),
            Principal::with_secret("mi", "unused")
                .managed(ManagedIdentity::UserAssigned)
                .federated("https://issuer", "sa"),
        ],
        ..KeyVaultConfig::default()
    };
    let handle = KeyVaultEmulator::start(config).await.expect("start");
    let http = client(&handle);
    let vault = handle.vault_url().as_str();
    let first = handle.set_secret("db", "one", &[]).expect("set");
    handle.set_secret("db", "two", &[]).expect("set");
    handle.set_enabled("db", &first, false).expect("disable");

    let reader = bearer(&http, &handle, "reader", "reader-secret").await;
    let lister = bearer(&http, &handle, "lister", "lister-secret").await;
    let got: Value = http
        .get(format!("{vault}secrets/db/?{API}"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got["value"], "two");
    let disabled = http
        .get(format!("{vault}secrets/db/{first}?{API}"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("get");
    assert_eq!(disabled.status(), 403);
    let body: Value = disabled.json().await.expect("json");
    assert_eq!(body["error"]["innererror"]["code"], "SecretDisabled");
    let denied = http
        .get(format!("{vault}secrets?{API}"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("list");
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("does not have secrets list permission")
    );
    let denied = http
        .get(format!("{vault}secrets/db/?{API}"))
        .bearer_auth(&lister)
        .send()
        .await
        .expect("get");
    assert_eq!(denied.status(), 403);
    let versions: Value = http
        .get(format!("{vault}secrets/db/versions?{API}"))
        .bearer_auth(&lister)
        .send()
        .await
        .expect("versions")
        .json()
        .await
        .expect("json");
    assert_eq!(versions["value"].as_array().expect("items").len(), 2);

    // A token for another audience is refused by the vault with a challenge.
    let other_scope = [
        ("grant_type", "client_credentials"),
        ("client_id", "reader"),
        ("client_secret", "reader-secret"),
        ("scope", "https://storage.azure.com/.default"),
    ];
    let url = format!("{}{}/oauth2/v2.0/token", handle.authority_url(), handle.tenant());
    let other: Value = post_form(&http, &url, &other_scope)
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let wrong_audience = http
        .get(format!("{vault}secrets/db/?{API}"))
        .bearer_auth(other["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("get");
    assert_eq!(wrong_audience.status(), 401);
    assert!(wrong_audience.headers().contains_key("www-authenticate"));

    // Federated assertion: accepted for the registered subject only.
    let assertion = handle.mint_federated_token("https://issuer", "sa");
    let assertion_form = |assertion: &str| {
        vec![
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_id".to_owned(), "mi".to_owned()),
            ("client_assertion".to_owned(), assertion.to_owned()),
            (
                "client_assertion_type".to_owned(),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            ("scope".to_owned(), "https://vault.azure.net/.default".to_owned()),
        ]
    };
    assert_eq!(
        post_form(&http, &url, &assertion_form(&assertion))
            .send()
            .await
            .expect("token")
            .status(),
        200
    );
    let stranger = handle.mint_federated_token("https://issuer", "someone-else");
    let refused = post_form(&http, &url, &assertion_form(&stranger))
        .send()
        .await
        .expect("token");
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.expect("json");
    assert!(
        body["error_description"]
            .as_str()
            .expect("desc")
            .starts_with("AADSTS70021")
    );

    // Managed identity endpoint: header required, identity chosen by client id.
    let mi = handle.identity_endpoint();
    let no_header = http
        .get(format!(
            "{mi}?{}",
            form(&[
                ("api-version", "2019-08-01"),
                ("resource", "https://vault.azure.net")
            ])
        ))
        .send()
        .await
        .expect("mi");
    assert_eq!(no_header.status(), 401);
    let ok: Value = http
        .get(format!(
            "{mi}?{}",
            form(&[
                ("api-version", "2019-08-01"),
                ("resource", "https://vault.azure.net"),
                ("client_id", "mi")
            ])
        ))
        .header("x-identity-header", handle.identity_header())
        .send()
        .await
        .expect("mi")
        .json()
        .await
        .expect("json");
    assert!(ok["expires_on"].as_str().expect("string").parse::<i64>().is_ok());
    let unknown = http
        .get(format!(
            "{mi}?{}",
            form(&[
                ("api-version", "2019-08-01"),
                ("resource", "https://vault.azure.net"),
                ("client_id", "reader")
            ])
        ))
        .header("x-identity-header", handle.identity_header())
        .send()
        .await
        .expect("mi");
    assert_eq!(unknown.status(), 400);
    handle.shutdown().await;
}
