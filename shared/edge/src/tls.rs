//! TLS and mutual TLS for internal gRPC (rustls through tonic). Plaintext
//! is the default (dev); each setting is a PEM file path from the
//! environment:
//!
//! | setting | side | meaning |
//! |---|---|---|
//! | `GRPC_TLS_CERT` + `GRPC_TLS_KEY` | server, client | this process's certificate: what its gRPC server presents, and its client certificate when it calls a service under mTLS |
//! | `GRPC_TLS_CLIENT_CA` | server | require client certificates signed by this CA (mTLS) |
//! | `GRPC_TLS_CA` | client | trust servers signed by this CA; outgoing calls use TLS (an `http://` URL is upgraded) |
//! | `GRPC_TLS_DOMAIN` | client | the name to verify in the server's certificate (default: the URL's host) |
//!
//! An `https://` service URL without `GRPC_TLS_CA` trusts the system's roots.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// Errors reading the TLS settings (refused at start).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {setting} ({path}): {source}")]
    Read {
        /// The env var.
        setting: &'static str,
        /// Its value.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Settings that only make sense together.
    #[error("{0}")]
    Incomplete(&'static str),
    /// tonic refused the configuration.
    #[error("configuring gRPC TLS: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The service URL is not a URL.
    #[error("{name} `{url}` is not a URL")]
    BadUrl {
        /// The setting.
        name: String,
        /// Its value.
        url: String,
    },
}

/// TLS settings of gRPC servers and clients (all optional; plaintext when unset).
#[derive(Debug, Clone, Default, Args)]
pub struct GrpcTlsSettings {
    /// PEM certificate (chain) this process presents: as a gRPC server, and as a client under mTLS.
    #[arg(long, env = "GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of GRPC_TLS_CERT.
    #[arg(long, env = "GRPC_TLS_KEY", hide_env_values = true)]
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM CA that gRPC servers require client certificates from (enables mTLS).
    #[arg(long, env = "GRPC_TLS_CLIENT_CA")]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// PEM CA that gRPC clients trust for the services' certificates (enables TLS on calls).
    #[arg(long, env = "GRPC_TLS_CA")]
    pub grpc_tls_ca: Option<PathBuf>,
    /// Name to verify in the services' certificates (default: the URL's host).
    #[arg(long, env = "GRPC_TLS_DOMAIN")]
    pub grpc_tls_domain: Option<String>,
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { setting, path: path.display().to_string(), source })
}

impl GrpcTlsSettings {
    fn identity(&self) -> Result<Option<Identity>, TlsError> {
        match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(cert), Some(key)) => {
                Ok(Some(Identity::from_pem(read("GRPC_TLS_CERT", cert)?, read("GRPC_TLS_KEY", key)?)))
            }
            (None, None) => Ok(None),
            _ => Err(TlsError::Incomplete("GRPC_TLS_CERT and GRPC_TLS_KEY are set together")),
        }
    }

    /// A server builder with TLS (and mTLS) as configured.
    pub fn server(&self) -> Result<Server, TlsError> {
        let identity = self.identity()?;
        let builder = Server::builder();
        match (identity, &self.grpc_tls_client_ca) {
            (None, None) => Ok(builder),
            (None, Some(_)) => Err(TlsError::Incomplete("GRPC_TLS_CLIENT_CA needs GRPC_TLS_CERT and GRPC_TLS_KEY")),
            (Some(identity), client_ca) => {
                let mut config = ServerTlsConfig::new().identity(identity);
                if let Some(ca) = client_ca {
                    config = config.client_ca_root(Certificate::from_pem(read("GRPC_TLS_CLIENT_CA", ca)?));
                }
                Ok(builder.tls_config(config)?)
            }
        }
    }

    /// Whether outgoing calls to `url` use TLS.
    fn client_tls(&self, url: &str) -> bool {
        self.grpc_tls_ca.is_some() || url.starts_with("https://")
    }

    /// The URL scheme for a service at a loopback address (`dev` wires its own URLs).
    pub fn scheme(&self) -> &'static str {
        if self.grpc_tls_ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A lazily connecting endpoint for the service at `url` (`name` is the setting, for errors).
    pub fn endpoint(&self, name: &str, url: &str) -> Result<Endpoint, TlsError> {
        let bad_url = || TlsError::BadUrl { name: name.to_owned(), url: url.to_owned() };
        if !self.client_tls(url) {
            return Endpoint::from_shared(url.to_owned()).map_err(|_| bad_url());
        }
        let url = match url.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => url.to_owned(),
        };
        let endpoint = Endpoint::from_shared(url).map_err(|_| bad_url())?;
        let mut config = ClientTlsConfig::new();
        config = match &self.grpc_tls_ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read("GRPC_TLS_CA", ca)?)),
            None => config.with_native_roots(),
        };
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        if let Some(domain) = self.grpc_tls_domain.as_deref().filter(|d| !d.is_empty()) {
            config = config.domain_name(domain);
        }
        Ok(endpoint.tls_config(config)?)
    }
}
