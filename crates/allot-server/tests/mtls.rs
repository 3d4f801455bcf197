//! mTLS against the real server: a throwaway CA (rcgen) issues the server's and the clients'
//! certificates; a client certificate from the configured CA whose SAN is mapped is admitted
//! as its tenant and role, one from another CA (or none) never gets past the handshake, an
//! unmapped one is UNAUTHENTICATED, and certificates and mapping are re-read while serving.

mod common;

use std::path::{Path, PathBuf};

use allot_proto::v1 as pb;
use allot_proto::v1::admin_client::AdminClient;
use allot_proto::v1::entitlements_client::EntitlementsClient;
use allot_server::testkit::TestServer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("ca").pem();
    Ca { issuer: Issuer::new(params, key), pem }
}

/// A leaf certificate (PEM) and its key, with DNS SANs or one URI SAN.
fn leaf(ca: &Ca, dns: &[&str], uri: Option<&str>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>()).expect("params");
    if let Some(uri) = uri {
        params.subject_alt_names.push(SanType::URI(uri.try_into().expect("uri")));
    }
    params.distinguished_name.push(DnType::CommonName, uri.unwrap_or("leaf"));
    (params.signed_by(&key, &ca.issuer).expect("leaf").pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn identities(tenant: &str, role: &str) -> String {
    format!("[[identity]]\nmatch = \"uri:spiffe://payments/checkout\"\ntenant_id = \"{tenant}\"\nrole = \"{role}\"\n")
}

async fn channel(server: &TestServer, ca_pem: &str, client: Option<&(String, String)>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://localhost:{}", server.addr.port())).expect("endpoint").tls_config(tls)?.connect().await
}

async fn balance(channel: Channel) -> Result<pb::GetBalanceResponse, tonic::Status> {
    AdminClient::new(channel).get_balance(pb::GetBalanceRequest { account_id: "acct".into() }).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_the_ca_map_to_tenant_and_role_and_others_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let ours = ca("allot test ca");
    let theirs = ca("someone else's ca");
    let (server_cert, server_key) = leaf(&ours, &["localhost"], None);
    let checkout = leaf(&ours, &[], Some("spiffe://payments/checkout"));
    let unmapped = leaf(&ours, &[], Some("spiffe://payments/other"));
    let impostor = leaf(&theirs, &[], Some("spiffe://payments/checkout"));
    let ca_file = write(dir.path(), "client-ca.pem", &ours.pem);
    // The tenant is the test server's, which exists only once it starts: map a placeholder first.
    let identities_file = write(dir.path(), "identities.toml", &identities(&uuid::Uuid::nil().to_string(), "charge"));
    let (cert_file, key_file) = (write(dir.path(), "server.pem", &server_cert), write(dir.path(), "server.key", &server_key));
    let health_port = allot_server::localstack::free_port().expect("free port");
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.health_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], health_port)));
        c.tls_cert_file = Some(cert_file);
        c.tls_key_file = Some(key_file);
        c.tls_client_ca_file = Some(ca_file.clone());
        c.tls_identities_file = Some(identities_file.clone());
    })
    .await;
    let tls = server.tls.clone().expect("tls");
    let tenant = server.tenant.tenant.to_string();
    std::fs::write(&identities_file, identities(&tenant, "charge")).expect("mapping");
    assert!(tls.reload_if_changed().expect("reload"), "a changed mapping is picked up");
    assert!(!tls.reload_if_changed().expect("reload"), "unchanged files are not reloaded");

    // Probes that cannot speak TLS reach health alone, in plaintext; nothing else is served there.
    // (The server binds it as it starts serving: wait for it, bounded.)
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{health_port}")).expect("endpoint");
    let mut plain = None;
    for _ in 0..250 {
        if let Ok(channel) = endpoint.connect().await {
            plain = Some(channel);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let plain = plain.expect("the health port accepts connections");
    let health = tonic_health::pb::health_client::HealthClient::new(plain.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    assert_eq!(balance(plain).await.expect_err("no data on the health port").code(), Code::Unimplemented);

    // The mapped certificate acts for the tenant, in its role (charge: reads yes, admin no).
    let admitted = channel(&server, &ours.pem, Some(&checkout)).await.expect("handshake");
    balance(admitted.clone()).await.expect("a charge certificate may read balances");
    let denied = AdminClient::new(admitted.clone())
        .upsert_account(pb::Account { account_id: "a".into(), org_id: String::new() })
        .await
        .expect_err("admin only");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let decision = EntitlementsClient::new(admitted)
        .check(pb::CheckRequest { account_id: "acct".into(), meter: "tokens".into(), amount_credits: 1, ..Default::default() })
        .await
        .expect("check");
    assert_eq!(decision.into_inner().reason, pb::DenialReason::NoEntitlement as i32, "the tenant has no plan yet");

    // A valid certificate that no identity maps: UNAUTHENTICATED.
    let stranger = channel(&server, &ours.pem, Some(&unmapped)).await.expect("handshake");
    assert_eq!(balance(stranger).await.expect_err("unmapped").code(), Code::Unauthenticated);

    // Another CA's certificate, or none: no call gets through.
    for (what, client) in [("wrong CA", Some(&impostor)), ("no certificate", None)] {
        match channel(&server, &ours.pem, client).await {
            Err(_) => {}
            Ok(channel) => {
                let err = balance(channel).await.expect_err(what);
                // The handshake's refusal reaches the client as a transport failure (which one
                // depends on when the client notices), never as an answer of the server.
                assert!(matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled), "{what}: {err:?}");
            }
        }
    }

    // Hot reload: trust the other CA instead; its certificate now works and ours no longer does.
    std::fs::write(&ca_file, &theirs.pem).expect("new ca");
    assert!(tls.reload_if_changed().expect("reload"));
    balance(channel(&server, &ours.pem, Some(&impostor)).await.expect("handshake")).await.expect("the newly trusted CA's certificate");
    let refused = match channel(&server, &ours.pem, Some(&checkout)).await {
        Err(_) => true,
        Ok(channel) => balance(channel).await.is_err(),
    };
    assert!(refused, "the old CA is no longer trusted after the reload");
    // A broken file keeps the previous configuration in force.
    std::fs::write(&ca_file, "not a certificate").expect("broken");
    assert!(tls.reload_if_changed().is_err());
    balance(channel(&server, &ours.pem, Some(&impostor)).await.expect("handshake")).await.expect("still served");
}
