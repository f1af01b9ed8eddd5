//! How the on-sale's people reach the gateway: a few HTTP/2 connections (as
//! through a load balancer), or a pool of HTTP/1.1 connections.
//!
//! The HTTP/2 side is a bare hyper connection: a request is a method, a
//! prepared URI and prepared headers, with no URL parsing, redirect policy
//! or pool lookup per request. Real people's browsers run on their own
//! machines; the load generator shares the server's two cores, so what it
//! spends per request is taken from the system under test. (With reqwest
//! the people spent about as much CPU per join as the gateway.)

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One way in: an HTTP/2 connection, or the HTTP/1.1 pool.
#[derive(Clone)]
pub enum Link {
    /// A shared HTTP/2 connection (requests are its streams).
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    /// reqwest's pool: a connection per request in flight.
    H1(reqwest::Client),
}

/// A request: where, and who asks.
pub struct Ask<'a> {
    /// Method.
    pub method: Method,
    /// Absolute URI.
    pub uri: &'a Uri,
    /// `Authorization` value.
    pub bearer: &'a HeaderValue,
    /// `Admission` value, when booking.
    pub admission: Option<&'a str>,
    /// A JSON body.
    pub json: Option<Vec<u8>>,
}

/// A response whose body is still to be read.
pub enum Answer {
    /// From the HTTP/2 connection.
    H2(http::Response<Incoming>),
    /// From the pool.
    H1(reqwest::Response),
}

impl Link {
    /// Opens `connections` HTTP/2 connections to `base` (`http://host:port`).
    pub async fn h2(base: &str, connections: usize) -> anyhow::Result<Vec<Self>> {
        let uri: Uri = base.parse().with_context(|| format!("the gateway's address {base}"))?;
        let authority = uri.authority().context("the gateway's address has no host")?.as_str().to_owned();
        let mut links = Vec::with_capacity(connections);
        for _ in 0..connections {
            let socket = tokio::net::TcpStream::connect(&authority).await?;
            socket.set_nodelay(true)?;
            let (send, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket)).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    println!("bench: an HTTP/2 connection to the gateway ended: {error}");
                }
            });
            links.push(Self::H2(send));
        }
        Ok(links)
    }

    /// Sends `ask`.
    pub async fn send(&self, ask: Ask<'_>) -> anyhow::Result<Answer> {
        match self {
            Self::H2(send) => {
                let mut request = Request::builder().method(ask.method).uri(ask.uri.clone());
                if let Some(headers) = request.headers_mut() {
                    headers.insert(header::AUTHORIZATION, ask.bearer.clone());
                    if let Some(admission) = ask.admission {
                        headers.insert("admission", HeaderValue::from_str(admission)?);
                    }
                    if ask.json.is_some() {
                        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    }
                }
                let request = request.body(Full::new(ask.json.map(Bytes::from).unwrap_or_default()))?;
                Ok(Answer::H2(send.clone().send_request(request).await?))
            }
            Self::H1(client) => {
                let mut request =
                    client.request(ask.method, ask.uri.to_string()).header(header::AUTHORIZATION, ask.bearer.clone());
                if let Some(admission) = ask.admission {
                    request = request.header("admission", admission);
                }
                if let Some(json) = ask.json {
                    request = request.header(header::CONTENT_TYPE, "application/json").body(json);
                }
                Ok(Answer::H1(request.send().await?))
            }
        }
    }
}

impl Answer {
    /// The status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::H2(response) => response.status().as_u16(),
            Self::H1(response) => response.status().as_u16(),
        }
    }

    /// The next piece of the body; `None` at its end or when it broke.
    pub async fn chunk(&mut self) -> Option<Bytes> {
        match self {
            Self::H2(response) => loop {
                let frame = response.body_mut().frame().await?.ok()?;
                if let Ok(data) = frame.into_data() {
                    return Some(data);
                }
            },
            Self::H1(response) => response.chunk().await.ok().flatten(),
        }
    }

    /// The whole body (read to its end, so the stream closes cleanly).
    pub async fn body(mut self) -> Bytes {
        let mut all = BytesMut::new();
        while let Some(chunk) = self.chunk().await {
            all.extend_from_slice(&chunk);
        }
        all.freeze()
    }
}
