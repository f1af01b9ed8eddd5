//! CORS: which browser origins may call the API. Preflights are answered
//! before authentication, the edge's limits and the router, for the origins
//! `GATEWAY_CORS_ORIGINS` lists (none by default); `ticketing dev` allows
//! any localhost origin. Tokens travel in `Authorization`, never in cookies,
//! so credentials are not allowed.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Why an origin in `GATEWAY_CORS_ORIGINS` was refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error("GATEWAY_CORS_ORIGINS: {origin:?} is not an origin (scheme://host[:port], no path, e.g. https://tickets.example.com)")]
pub struct BadOrigin {
    origin: String,
}

/// The layer for `origins`, plus any localhost origin when `localhost`;
/// `None` when no origin may call.
pub fn layer(origins: &[String], localhost: bool) -> Result<Option<CorsLayer>, BadOrigin> {
    let listed = origins
        .iter()
        .map(|origin| origin.trim())
        .filter(|origin| !origin.is_empty())
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    if listed.is_empty() && !localhost {
        return Ok(None);
    }
    let allow = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        listed.contains(origin) || (localhost && is_localhost(origin))
    });
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("admission"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                HeaderName::from_static("idempotent-replayed"),
                header::RETRY_AFTER,
                header::LINK,
                header::WWW_AUTHENTICATE,
            ])
            .max_age(Duration::from_secs(600)),
    ))
}

fn parse(origin: &str) -> Result<HeaderValue, BadOrigin> {
    let bad = || BadOrigin { origin: origin.to_owned() };
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    let well_formed = matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' ', '*'])
        && origin.is_ascii();
    if !well_formed {
        return Err(bad());
    }
    HeaderValue::from_str(&origin.to_ascii_lowercase()).map_err(|_| bad())
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, on any port.
fn is_localhost(origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else { return false };
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    let host = match rest.strip_prefix("[::1]") {
        Some(port) => return matches!(scheme, "http" | "https") && valid_port(port),
        None => rest.split_once(':').map_or(rest, |(host, _)| host),
    };
    let port = &rest[host.len()..];
    matches!(scheme, "http" | "https") && matches!(host, "localhost" | "127.0.0.1") && valid_port(port)
}

fn valid_port(rest: &str) -> bool {
    rest.is_empty() || rest.strip_prefix(':').is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_at_start_up() {
        assert!(parse("https://tickets.example.com").is_ok());
        assert!(parse("http://localhost:3000").is_ok());
        for bad in ["tickets.example.com", "https://x.com/", "ftp://x.com", "*", "https://*.x.com", "https://"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(layer(&[], false).unwrap().is_none());
        assert!(layer(&["nope".into()], false).is_err());
    }

    #[test]
    fn localhost_means_the_loopback_host_on_any_port() {
        for yes in ["http://localhost", "http://localhost:5173", "https://127.0.0.1:8443", "http://[::1]:3000"] {
            assert!(is_localhost(&HeaderValue::from_static(yes)), "{yes}");
        }
        for no in ["http://localhost.evil.com", "http://127.0.0.1.evil.com:80", "http://evil.com", "http://localhost:x"]
        {
            assert!(!is_localhost(&HeaderValue::from_static(no)), "{no}");
        }
    }
}
