//! A constant-answer ext_authz server: every `Check` is allowed with one fixed
//! header, nothing is read from the request beyond what tonic decodes.
//!
//! It is the benchmarks' floor (`tests/bench/run.sh`, `BENCHMARKS.md`): the
//! same tonic, prost and tokio as portcullis, so the gap between the two is
//! the cost of deciding, not of speaking gRPC. Never a server to deploy.
//!
//! `cargo run --release --example const_authz -- 127.0.0.1:9101`

use std::net::SocketAddr;

use portcullis::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use portcullis::proto::auth::{CheckRequest, CheckResponse, OkHttpResponse, check_response};
use portcullis::proto::core::{HeaderValue, HeaderValueOption};
use portcullis::proto::google::rpc::Status as RpcStatus;
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct Constant;

#[tonic::async_trait]
impl Authorization for Constant {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-subject".into(),
                        value: "alice".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9101".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Constant))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
