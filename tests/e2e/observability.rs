//! The operator's pack in `deploy/observability/` queries only metrics a
//! running system exports: every metric name in the Grafana dashboard's
//! and the Prometheus rules' expressions shows up on `/metrics` after one
//! purchase and one seat conflict.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::System;

const DASHBOARD: &str = include_str!("../../deploy/observability/grafana-dashboard.json");
const RULES: &str = include_str!("../../deploy/observability/alerts.yml");

/// PromQL words that are not metric names (aggregators may be followed by
/// `by (…)` rather than by their parenthesis).
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// The metric names an expression reads (histogram series folded to their
/// metric): identifiers outside label matchers and grouping clauses that
/// are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut after_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' || c == '"' || c == '[' {
            let close = match c {
                '{' => '}',
                '"' => '"',
                _ => ']',
            };
            i += 1;
            while i < chars.len() && chars[i] != close {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == '(' && after_grouping {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            after_grouping = false;
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '-' | '+')) {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next] == ' ' {
                next += 1;
            }
            let is_call = chars.get(next) == Some(&'(');
            if matches!(word.as_str(), "by" | "without" | "on" | "ignoring" | "group_left" | "group_right") {
                after_grouping = true;
            } else if !is_call && !KEYWORDS.contains(&word.as_str()) {
                let metric = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(&word)
                    .to_owned();
                names.insert(metric);
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

/// Every `expr:` of the rules file, inline or as a folded block.
fn rule_exprs() -> Vec<String> {
    let lines: Vec<&str> = RULES.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let indent = line.len() - line.trim_start().len();
            let rest = rest.trim();
            if rest == ">" || rest == "|" {
                let mut block = String::new();
                while i + 1 < lines.len() && lines[i + 1].len() - lines[i + 1].trim_start().len() > indent {
                    i += 1;
                    block.push_str(lines[i].trim());
                    block.push(' ');
                }
                exprs.push(block);
            } else {
                exprs.push(rest.to_owned());
            }
        }
        i += 1;
    }
    exprs
}

#[test]
fn the_expression_parser_finds_metrics_and_skips_labels_functions_and_groupings() {
    let names = metric_names(
        "histogram_quantile(0.95, sum by (group, le) (rate(consumer_lag_seconds_bucket{group=\"x\"}[5m]))) > 30 \
         and min by (service) (service_ready) == 0 or sum(rate(http_requests_total{status=~\"5..\"}[5m])) / 1e-9",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["consumer_lag_seconds", "http_requests_total", "service_ready"]);
    let joined = metric_names("sum by (p) (a_total) > 0 and on (p) sum by (p) (increase(b_total[5m])) == 0");
    assert_eq!(joined.into_iter().collect::<Vec<_>>(), ["a_total", "b_total"], "on (…) names labels, not metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alert_rules_query_is_exported() {
    let exprs: Vec<String> = dashboard_exprs().into_iter().chain(rule_exprs()).collect();
    assert!(exprs.len() >= 20, "read the dashboard's and the rules' expressions: {exprs:?}");
    let wanted: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();

    let sys = System::start().await;
    // One purchase (bookings, payments, both relays and consumers, the
    // projection) and one seat conflict.
    let user = "obs_user";
    let (booking, intent) = sys.book(user, "perf_001", &["J7"]).await;
    sys.wait_intent(user, &intent).await;
    assert_eq!(sys.pay(user, &intent, "tok_visa").await.status, reqwest::StatusCode::OK);
    sys.wait_listed(user, &booking, "confirmed").await;
    assert_eq!(sys.try_book("obs_other", "perf_001", &["J7"]).await.status, reqwest::StatusCode::BAD_REQUEST);
    // And one on-sale, admitted and sold out (the waiting room's metrics).
    crate::waiting_room::sell_out_one_seat_through_the_queue(&sys, "perf_obs_sale", "obs_queued").await;

    let missing = testkit::eventually(std::time::Duration::from_secs(30), || async {
        let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.ok()?.text().await.ok()?;
        let exported: BTreeSet<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(|name| {
                ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name).to_owned()
            })
            .collect();
        let missing: Vec<&String> = wanted.iter().filter(|w| !exported.contains(*w)).collect();
        missing.is_empty().then_some(())
    })
    .await;
    if missing.is_none() {
        let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let absent: Vec<&String> =
            wanted.iter().filter(|w| !samples.iter().any(|l| l.starts_with(w.as_str()))).collect();
        panic!("the pack queries metrics no running system exports: {absent:?}");
    }
    // Every exported metric says what it means.
    let text = sys.client.get(format!("{}/metrics", sys.metrics)).send().await.unwrap().text().await.unwrap();
    let typed: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(typed.len() >= 20, "{text}");
    let without_help: Vec<&&str> =
        typed.iter().filter(|name| !text.lines().any(|l| l.starts_with(&format!("# HELP {name} ")))).collect();
    assert!(
        without_help.is_empty(),
        "metrics without HELP text (add them to edge::metrics::CATALOGUE): {without_help:?}"
    );
    sys.stop().await;
}

/// Every alert links its runbook section, and every section it names exists.
#[test]
fn every_alert_has_a_runbook_section() {
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/observability/alerts.yml")).unwrap();
    let runbook = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RUNBOOK.md")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    let urls: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("runbook_url: ")).collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    assert_eq!(alerts.len(), urls.len(), "an alert without runbook_url");
    for (alert, url) in alerts.iter().zip(&urls) {
        let anchor = alert.to_lowercase();
        assert!(url.contains(&format!("docs/RUNBOOK.md#{anchor}")), "{alert}: {url}");
        assert!(runbook.contains(&format!("### {alert}")), "docs/RUNBOOK.md has no section for {alert}");
    }
}

/// Without a span exporter (no `OTEL_EXPORTER_OTLP_ENDPOINT`, as here), no
/// OpenTelemetry span is built, but the caller's trace still goes along:
/// the booking's event, and the payment intent the payment-service creates
/// when it consumes that event from Kafka, carry the caller's trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_callers_trace_still_reaches_the_events_of_both_services() {
    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    let sys = System::start().await;
    let reply = sys
        .client
        .post(format!("{}/bookings", sys.base))
        .bearer_auth(sys.token("trace_no_export"))
        .header("traceparent", format!("00-{TRACE_ID}-b7ad6b7169203331-01"))
        .json(&serde_json::json!({"performanceId": "perf_001", "seatIds": ["E7"], "userId": "trace_no_export"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), reqwest::StatusCode::CREATED);
    let created: serde_json::Value = reply.json().await.unwrap();
    let (booking, intent) = (created["bookingId"].as_str().unwrap(), created["paymentIntentId"].as_str().unwrap());
    sys.wait_intent("trace_no_export", intent).await;
    let traceparent = |pool: sqlx::PgPool, stream: String, event: &'static str| async move {
        sqlx::query_scalar::<_, Option<String>>(
            "select metadata->>'traceparent' from events where stream_id = $1 and event_type = $2",
        )
        .bind(stream)
        .bind(event)
        .fetch_one(&pool)
        .await
        .unwrap()
        .unwrap_or_default()
    };
    let locked = traceparent(sys.booking_pool().await, booking.to_owned(), "SeatLocked").await;
    let created = traceparent(sys.payment_pool().await, intent.to_owned(), "PaymentIntentCreated").await;
    for (event, value) in [("SeatLocked", &locked), ("PaymentIntentCreated", &created)] {
        let parts: Vec<&str> = value.split('-').collect();
        assert_eq!(parts.len(), 4, "{event}: {value}");
        assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"), "{event}: {value}");
    }
    sys.stop().await;
}
