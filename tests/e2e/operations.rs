//! Operator commands as an operator runs them: read commands never create
//! or migrate anything; `ticketing migrate` prepares what a service without
//! ownership then only checks.

use std::process::Command;

use testkit::{server_url, unique_name};

fn ticketing(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(args)
        .env("DATABASE_URL", server_url())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

async fn database_exists(name: &str) -> bool {
    let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
    let exists = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_a_mistyped_database_fails_and_creates_nothing_until_migrate_prepares_it() {
    let booking = unique_name("t_ops_booking");
    let payment = unique_name("t_ops_payment");
    let env = [("BOOKING_DATABASE", booking.as_str()), ("PAYMENT_DATABASE", payment.as_str())];

    let check = ticketing(&["check"], &env);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "check on a missing database exited 0");
    assert!(stderr.contains("does not exist") && stderr.contains("ticketing migrate"), "{stderr}");
    assert!(!database_exists(&booking).await, "check created {booking}");
    assert!(!database_exists(&payment).await, "check created {payment}");

    let rebuild = ticketing(&["rebuild-projections"], &env);
    assert!(!rebuild.status.success());
    assert!(!database_exists(&booking).await, "rebuild-projections created {booking}");

    let migrate = ticketing(&["migrate"], &env);
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let check = ticketing(&["check"], &env);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("ok: no invariant violated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_may_not_migrate_refuses_an_unprepared_database_and_names_the_fix() {
    let booking = unique_name("t_ops_booking");
    let output = ticketing(
        &["booking"],
        &[
            ("BOOKING_DATABASE", booking.as_str()),
            ("DATABASE_MIGRATE", "false"),
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("JWT_SECRET", "a-secret-long-enough-for-hs256-signing"),
            ("BOOKING_GRPC_ADDR", "127.0.0.1:0"),
            ("METRICS_ADDR", "127.0.0.1:0"),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("does not exist") && stderr.contains("ticketing migrate"), "{stderr}");
    assert!(!database_exists(&booking).await);
}

#[test]
fn the_payment_service_refuses_to_start_without_a_named_provider() {
    let payment = unique_name("t_ops_payment");
    let output = ticketing(
        &["payment"],
        &[
            ("PAYMENT_DATABASE", payment.as_str()),
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("JWT_SECRET", "a-secret-long-enough-for-hs256-signing"),
            ("PAYMENT_GRPC_ADDR", "127.0.0.1:0"),
            ("METRICS_ADDR", "127.0.0.1:0"),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("PSP is not set") && stderr.contains("PSP=simulated"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_come_from_the_identity_providers_role_claim() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let sys = crate::support::System::start_with(&["--jwt-role-claim=realm_access.roles"]).await;
    let now = chrono::Utc::now().timestamp();
    let token = |roles: serde_json::Value| {
        let claims = serde_json::json!({"sub": "kc_user", "exp": now + 600, "realm_access": {"roles": roles}});
        encode(&Header::default(), &claims, &EncodingKey::from_secret(sys.secret.as_bytes())).unwrap()
    };
    let register = |id: &str| serde_json::json!({"performanceId": id, "title": "x", "rows": [{"row": "A", "seats": 2, "price": 1000}]});
    let admin = sys
        .call(
            reqwest::Method::POST,
            "/performances",
            Some(&token(serde_json::json!(["admin"]))),
            Some(register("perf_kc")),
        )
        .await;
    assert_eq!(admin.status, reqwest::StatusCode::CREATED, "{}", admin.body);
    let user = sys
        .call(
            reqwest::Method::POST,
            "/performances",
            Some(&token(serde_json::json!(["user"]))),
            Some(register("perf_kc2")),
        )
        .await;
    assert_eq!(user.status, reqwest::StatusCode::FORBIDDEN);
    // The plain `role` claim no longer grants anything.
    let plain =
        sys.call(reqwest::Method::POST, "/performances", Some(&sys.admin_token()), Some(register("perf_kc3"))).await;
    assert_eq!(plain.status, reqwest::StatusCode::FORBIDDEN);
    sys.stop().await;
}
