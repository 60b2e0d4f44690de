//! The HTTP client portcullis uses to reach identity providers (key sets,
//! discovery, introspection): short timeouts, no redirects (a redirect could
//! steer a fetch elsewhere), no proxy from the environment, bounded bodies, and
//! optionally a private CA and a client certificate per provider.
//!
//! Errors name the URL without its query (which could hold a secret) and never
//! quote a response body.

use crate::foundation::policy_files::FileScope;
use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;

/// Largest response body read from an identity provider.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Connecting gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole request (connect, headers, body) gives up after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings for one identity provider, as written in a policy file. Paths
/// are relative to the policy file's directory; the files are read when the
/// policy loads (mount them from a Secret).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM CA certificates trusted for this provider, in addition to the
    /// platform's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate (chain) and its PEM private key, for providers
    /// that require mutual TLS.
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
}

/// The shared client, for providers with no TLS settings of their own.
pub fn default_client() -> Result<reqwest::Client, String> {
    static CLIENT: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
        builder()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    });
    CLIENT.clone()
}

/// A client for one provider: the shared one, or one with its CA and client
/// certificate, with a fingerprint of those files (so clients built from the
/// same files can be shared, and changed files make a new one).
pub fn client(
    tls: Option<&TlsSpec>,
    files: &FileScope,
) -> Result<(reqwest::Client, Option<String>), String> {
    let Some(tls) = tls.filter(|t| **t != TlsSpec::default()) else {
        return Ok((default_client()?, None));
    };
    let mut fingerprint = sha2::Sha256::default();
    let mut read = |name: &str, file: &str| {
        use sha2::Digest as _;
        let bytes = files.read(&format!("tls.{name}"), file)?;
        fingerprint.update(name.as_bytes());
        fingerprint.update(&bytes);
        Ok::<_, String>(bytes)
    };
    let mut b = builder();
    if let Some(ca) = &tls.ca_file {
        let pem = read("ca_file", ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| format!("tls.ca_file {ca}: not PEM certificates"))?;
        if certs.is_empty() {
            return Err(format!("tls.ca_file {ca}: no certificate"));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read("cert_file", cert)?;
            pem.push(b'\n');
            pem.extend(read("key_file", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                format!("tls.cert_file {cert} / key_file {key}: not a PEM certificate and key")
            })?;
            b = b.identity(identity);
        }
        (None, None) => {}
        _ => return Err("tls.cert_file and tls.key_file go together".into()),
    }
    let client = b
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    use sha2::Digest as _;
    Ok((client, Some(hex::encode(fingerprint.finalize()))))
}

/// The scheme, host and port of an absolute URL, or an error for anything but
/// `https` (and `http` to a loopback host, for local identity providers and tests).
pub fn origin_of(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| format!("{url:?} is not a URL"))?;
    let host = parsed.host_str().ok_or(format!("{url:?} has no host"))?;
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(format!("{url:?} must use https")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{url:?} must not carry credentials"));
    }
    Ok(parsed.origin().ascii_serialization())
}

/// Sends a request and reads a successful response of at most
/// [`MAX_RESPONSE_BYTES`].
pub async fn send(request: reqwest::RequestBuilder, full_url: &str) -> Result<Vec<u8>, String> {
    match send_any(request, full_url).await? {
        (status, body) if (200..300).contains(&status) => Ok(body),
        (status, _) => Err(format!("{}: status {status}", without_query(full_url))),
    }
}

fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Sends a request and reads the response of any status, at most
/// [`MAX_RESPONSE_BYTES`]. `Err` only when no response came (or it was too
/// large).
pub async fn send_any(
    request: reqwest::RequestBuilder,
    full_url: &str,
) -> Result<(u16, Vec<u8>), String> {
    match send_bounded(request, full_url).await? {
        (status, Some(body)) => Ok((status, body)),
        (_, None) => Err(format!(
            "{}: body over {MAX_RESPONSE_BYTES} bytes",
            without_query(full_url)
        )),
    }
}

/// [`send_any`], with a body over [`MAX_RESPONSE_BYTES`] as `None` (not read
/// further) rather than an error, for a caller to whom that says something
/// about what it asked, not about the server.
pub async fn send_bounded(
    request: reqwest::RequestBuilder,
    full_url: &str,
) -> Result<(u16, Option<Vec<u8>>), String> {
    origin_of(full_url)?;
    let url = without_query(full_url);
    let mut response = request
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {}", describe(&e)))?;
    let status = response.status().as_u16();
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Ok((status, None));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("{url}: {}", describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok((status, None));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, Some(body)))
}

fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "bad body"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_be_https_or_loopback() {
        assert_eq!(
            origin_of("https://idp.example/a/b").unwrap(),
            "https://idp.example"
        );
        assert!(origin_of("http://idp.example/jwks").is_err());
        assert!(origin_of("http://127.0.0.1:8080/jwks").is_ok());
        assert!(origin_of("https://user:pw@idp.example/").is_err());
        assert!(origin_of("file:///etc/passwd").is_err());
    }

    #[test]
    fn tls_files_are_checked_when_the_policy_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = &FileScope::new(tmp.path(), &[]);
        let spec = TlsSpec {
            ca_file: Some("missing.pem".into()),
            ..TlsSpec::default()
        };
        assert!(
            client(Some(&spec), dir)
                .unwrap_err()
                .contains("missing.pem")
        );
        std::fs::write(tmp.path().join("ca.pem"), "not pem").unwrap();
        let spec = TlsSpec {
            ca_file: Some("ca.pem".into()),
            ..TlsSpec::default()
        };
        assert!(client(Some(&spec), dir).is_err());
        let spec = TlsSpec {
            cert_file: Some("c.pem".into()),
            ..TlsSpec::default()
        };
        assert!(
            client(Some(&spec), dir)
                .unwrap_err()
                .contains("go together")
        );
    }
}
