//! gRPC under mutual TLS, with throwaway certificates: the whole system
//! (gateway → services, payment-service → booking-service) works, and a
//! client without a certificate from the trusted CA is refused.

use std::path::Path;

use proto::booking::{booking_service_client::BookingServiceClient, GetSeatMapRequest};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::support::System;

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for localhost / 127.0.0.1 signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    (params.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Calls GetSeatMap on the booking-service over TLS trusting `ca`, with
/// `identity` as the client certificate; Err when the call is refused.
async fn seat_map(sys: &System, ca: &str, identity: Option<Identity>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", sys.booking_addr.port()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
    let request =
        sys.as_user("tls_user", GetSeatMapRequest { performance_id: "perf_001".into(), ..Default::default() });
    BookingServiceClient::new(channel).get_seat_map(request).await.map(|_| ()).map_err(|e| format!("call: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mtls_the_system_works_and_a_client_without_a_valid_certificate_is_refused() {
    let dir = std::env::temp_dir().join(testkit::unique_name("grpc_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = authority("ticketing test CA");
    let (cert, key) = leaf(&ca, "ticketing");
    let rogue_ca = authority("someone else's CA");
    let (rogue_cert, rogue_key) = leaf(&rogue_ca, "intruder");
    let ca_path = write(&dir, "ca.pem", &ca.pem());
    let flags = [
        format!("--grpc-tls-cert={}", write(&dir, "peer.pem", &cert)),
        format!("--grpc-tls-key={}", write(&dir, "peer.key", &key)),
        format!("--grpc-tls-client-ca={ca_path}"),
        format!("--grpc-tls-ca={ca_path}"),
        "--grpc-tls-domain=localhost".to_owned(),
    ];
    let sys = System::start_with(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // Gateway → booking → Kafka → payment → booking (admission), all under mTLS.
    let (booking, intent) = sys.book("tls_user", "perf_001", &["D1"]).await;
    let paid = sys.pay("tls_user", &intent, "tok_visa").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    sys.wait_status("tls_user", &booking, "confirmed").await;

    // A client with a certificate from the trusted CA gets through.
    seat_map(&sys, &ca.pem(), Some(Identity::from_pem(&cert, &key))).await.expect("a valid client certificate");
    // Without a client certificate, with one from another CA, or in plaintext: refused.
    let none = seat_map(&sys, &ca.pem(), None).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let rogue = seat_map(&sys, &ca.pem(), Some(Identity::from_pem(&rogue_cert, &rogue_key))).await;
    assert!(rogue.is_err(), "a certificate of another CA: {rogue:?}");
    let plaintext = BookingServiceClient::connect(format!("http://127.0.0.1:{}", sys.booking_addr.port())).await;
    let plaintext = match plaintext {
        Err(error) => Err(error.to_string()),
        Ok(mut client) => client
            .get_seat_map(
                sys.as_user("tls_user", GetSeatMapRequest { performance_id: "perf_001".into(), ..Default::default() }),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    assert!(plaintext.is_err(), "plaintext");
    sys.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
