//! Which TLS clients the gRPC listeners answer (`tls.allowed_clients`).
//!
//! `tls.client_ca_file` alone trusts the whole CA: in a mesh, every workload
//! holds a certificate from it, and any of them could ask for decisions and
//! probe policies. The allow-list names the clients answered, by the
//! identities in their leaf certificate's subject alternative names:
//!
//! - `spiffe: spiffe://<trust domain>/<path>`: exactly this SPIFFE ID;
//! - `trust_domain: <trust domain>`: any well-formed SPIFFE ID in it;
//! - `dns: <name>`: a DNS SAN equal to it (ASCII case aside);
//! - `uri: <uri>`: a URI SAN equal to it, byte for byte.
//!
//! The SPIFFE entries follow X.509-SVID: a certificate with more than one URI
//! SAN is no SVID and matches neither. The check runs once, after the
//! handshake ([`verdict`]); every call on a connection outside the list is
//! answered gRPC `PERMISSION_DENIED` by [`ClientGate`] and counted
//! (`portcullis_grpc_clients_refused_total`, no identity in a label), so
//! Envoy logs a clear error instead of a handshake failure.
//!
//! Never imports: the app, the pipeline or its stages.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

use super::connections::Conn;
use crate::identity::spiffe::parse_spiffe_id;

/// One entry of `tls.allowed_clients`: a map with exactly one of `spiffe`,
/// `trust_domain`, `dns` and `uri`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawClient")]
pub enum AllowedClient {
    /// Exactly this SPIFFE ID (the certificate's only URI SAN).
    Spiffe(String),
    /// Any SPIFFE ID in this trust domain (`cluster.local` or
    /// `spiffe://cluster.local`).
    TrustDomain(String),
    /// A DNS SAN equal to this name.
    Dns(String),
    /// A URI SAN equal to this URI.
    Uri(String),
}

/// The configuration's shape of an entry (YAML has no externally tagged enums).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    spiffe: Option<String>,
    trust_domain: Option<String>,
    dns: Option<String>,
    uri: Option<String>,
}

impl TryFrom<RawClient> for AllowedClient {
    type Error = String;

    fn try_from(raw: RawClient) -> Result<AllowedClient, String> {
        let all = [
            raw.spiffe.map(AllowedClient::Spiffe),
            raw.trust_domain.map(AllowedClient::TrustDomain),
            raw.dns.map(AllowedClient::Dns),
            raw.uri.map(AllowedClient::Uri),
        ];
        let mut set = all.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(one), None) => Ok(one),
            _ => Err(
                "a tls.allowed_clients entry has exactly one of spiffe, trust_domain, dns, uri"
                    .into(),
            ),
        }
    }
}

impl AllowedClient {
    /// Checks the entry's form; the message names it.
    pub fn validate(&self) -> Result<(), String> {
        let ok = match self {
            AllowedClient::Spiffe(id) => parse_spiffe_id(id).is_some_and(|(_, p)| !p.is_empty()),
            AllowedClient::TrustDomain(d) => {
                let d = d.strip_prefix("spiffe://").unwrap_or(d);
                !d.contains('/') && parse_spiffe_id(&format!("spiffe://{d}")).is_some()
            }
            AllowedClient::Dns(name) => {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            }
            AllowedClient::Uri(uri) => !uri.is_empty() && uri.contains(':'),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("tls.allowed_clients: {self:?} is not well formed"))
        }
    }

    fn matches(&self, sans: &Sans) -> bool {
        let svid = match sans.uris.as_slice() {
            [only] => parse_spiffe_id(only).map(|(domain, _)| (only.as_str(), domain)),
            _ => None,
        };
        match self {
            AllowedClient::Spiffe(id) => svid.is_some_and(|(s, _)| s == id),
            AllowedClient::TrustDomain(d) => {
                let d = d.strip_prefix("spiffe://").unwrap_or(d);
                svid.is_some_and(|(_, domain)| domain == d)
            }
            AllowedClient::Dns(name) => sans.dns.iter().any(|n| n.eq_ignore_ascii_case(name)),
            AllowedClient::Uri(uri) => sans.uris.iter().any(|u| u == uri),
        }
    }
}

/// The DNS and URI SANs of a certificate.
#[derive(Debug, Default)]
struct Sans {
    dns: Vec<String>,
    uris: Vec<String>,
}

fn sans(der: &[u8]) -> Option<Sans> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut out = Sans::default();
    if let Some(ext) = cert.subject_alternative_name().ok()? {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(n) => out.dns.push((*n).to_string()),
                GeneralName::URI(u) => out.uris.push((*u).to_string()),
                _ => {}
            }
        }
    }
    Some(out)
}

/// Whether a client that presented `certs` (leaf first; already verified
/// against the client CA by the handshake) is answered. An empty list allows
/// every client; a list and no certificate, or one that cannot be read,
/// allows none.
pub fn verdict(allowed: &[AllowedClient], certs: Option<&[impl AsRef<[u8]>]>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return false;
    };
    sans(leaf.as_ref()).is_some_and(|s| allowed.iter().any(|a| a.matches(&s)))
}

/// What a TLS connection's requests carry: the connection's handle and
/// whether its client is answered.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub conn: Conn,
    pub allowed: bool,
}

/// The outermost layer of the gRPC router: answers `PERMISSION_DENIED` to
/// every call of a client outside `tls.allowed_clients`, and hands the
/// connection's handle on to [`super::connections::CountRequests`]. A request
/// without [`TlsPeer`] (no TLS) passes as it is.
#[derive(Debug, Clone, Default)]
pub struct ClientGate {
    pub refused: Counter,
}

impl<S> tower::Layer<S> for ClientGate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            refused: self.refused.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Gated<S> {
    inner: S,
    refused: Counter,
}

type Response = axum::http::Response<tonic::body::Body>;

impl<S, B> tower::Service<axum::http::Request<B>> for Gated<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        if let Some(peer) = request.extensions().get::<TlsPeer>().cloned() {
            if !peer.allowed {
                self.refused.inc();
                let status = tonic::Status::permission_denied(
                    "this client certificate is not in tls.allowed_clients",
                );
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
            request.extensions_mut().insert(peer.conn);
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[rcgen::SanType]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans.to_vec();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(u: &str) -> rcgen::SanType {
        rcgen::SanType::URI(u.try_into().unwrap())
    }

    fn dns(d: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(d.try_into().unwrap())
    }

    #[test]
    fn spiffe_ids_trust_domains_dns_and_uri_sans_match_exactly() {
        let envoy = cert(&[uri("spiffe://cluster.local/ns/x/sa/envoy")]);
        let other = cert(&[uri("spiffe://cluster.local/ns/x/sa/other")]);
        let foreign = cert(&[uri("spiffe://evil.local/ns/x/sa/envoy")]);
        let two = cert(&[
            uri("spiffe://cluster.local/ns/x/sa/envoy"),
            uri("spiffe://cluster.local/ns/y/sa/y"),
        ]);
        let named = cert(&[dns("Envoy.X.svc"), uri("https://proxy.example/a")]);
        let none = cert(&[]);
        let ok = |allowed: &[AllowedClient], c: &Vec<u8>| verdict(allowed, Some(&[c][..]));

        let exact = [AllowedClient::Spiffe(
            "spiffe://cluster.local/ns/x/sa/envoy".into(),
        )];
        assert!(ok(&exact, &envoy));
        assert!(!ok(&exact, &other));
        assert!(!ok(&exact, &foreign));
        assert!(!ok(&exact, &two), "more than one URI SAN is no SVID");

        for domain in ["cluster.local", "spiffe://cluster.local"] {
            let td = [AllowedClient::TrustDomain(domain.into())];
            assert!(ok(&td, &envoy) && ok(&td, &other), "{domain}");
            assert!(!ok(&td, &foreign) && !ok(&td, &two), "{domain}");
        }
        // A prefix of a trust domain is not that trust domain.
        assert!(!ok(
            &[AllowedClient::TrustDomain("cluster.loca".into())],
            &envoy
        ));

        let by_dns = [AllowedClient::Dns("envoy.x.svc".into())];
        assert!(ok(&by_dns, &named));
        assert!(!ok(&[AllowedClient::Dns("x.svc".into())], &named));
        assert!(ok(
            &[AllowedClient::Uri("https://proxy.example/a".into())],
            &named
        ));
        assert!(!ok(
            &[AllowedClient::Uri("https://proxy.example/".into())],
            &named
        ));
        assert!(!ok(&by_dns, &none));

        // No list: everyone the CA vouches for. A list and no certificate, or
        // bytes that are no certificate: no one.
        assert!(ok(&[], &none));
        assert!(!verdict(&by_dns, None::<&[Vec<u8>]>));
        assert!(!verdict(&by_dns, Some(&[b"junk".to_vec()][..])));
    }

    #[test]
    fn malformed_entries_are_refused_at_load() {
        for bad in [
            AllowedClient::Spiffe("spiffe://cluster.local".into()),
            AllowedClient::Spiffe("https://cluster.local/x".into()),
            AllowedClient::TrustDomain("cluster.local/ns".into()),
            AllowedClient::TrustDomain("Cluster.Local".into()),
            AllowedClient::Dns("".into()),
            AllowedClient::Dns("*.x.svc".into()),
            AllowedClient::Uri("no-scheme".into()),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let good: Vec<AllowedClient> = serde_yaml::from_str(
            "[{spiffe: 'spiffe://cluster.local/ns/x/sa/envoy'}, {trust_domain: cluster.local}, {dns: envoy.x.svc}, {uri: 'urn:x'}]",
        )
        .unwrap();
        assert!(good.iter().all(|g| g.validate().is_ok()));
        assert_eq!(good[1], AllowedClient::TrustDomain("cluster.local".into()));
        for bad in ["[{spifee: x}]", "[{dns: a, uri: 'urn:b'}]", "[{}]"] {
            assert!(
                serde_yaml::from_str::<Vec<AllowedClient>>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
