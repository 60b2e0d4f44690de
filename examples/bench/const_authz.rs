//! A constant-answer ext_authz server: every `Check` is allowed with one fixed
//! header, nothing is read from the request beyond what tonic decodes.
//!
//! It is the benchmarks' floor (`tests/bench/run.sh`, `BENCHMARKS.md`): the
//! same tonic, prost and tokio as portcullis, so the gap between the two is
//! the cost of deciding, not of speaking gRPC. Never a server to deploy.
//!
//! It uses portcullis' allocator (mimalloc). With `--transport portcullis`
//! its connections get what portcullis gives its own (`TCP_NODELAY` and
//! `portcullis::transport::net::Batched`), so a benchmark can tell what the transport is
//! worth apart from what deciding costs.
//!
//! `cargo run --release --example const_authz -- 127.0.0.1:9101 [--transport portcullis]`

use std::net::SocketAddr;

use portcullis::foundation::proto::auth::authorization_server::{
    Authorization, AuthorizationServer,
};
use portcullis::foundation::proto::auth::{
    CheckRequest, CheckResponse, OkHttpResponse, check_response,
};
use portcullis::foundation::proto::core::{HeaderValue, HeaderValueOption};
use portcullis::foundation::proto::google::rpc::Status as RpcStatus;
use tonic::{Request, Response, Status};

/// The allocator portcullis' binary uses (src/main.rs), so that the floor
/// allocates as cheaply as the server measured against it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = args
        .first()
        .map_or("127.0.0.1:9101", String::as_str)
        .parse()?;
    let ours = match &args[1.min(args.len())..] {
        [] => false,
        [flag, value] if flag == "--transport" && value == "portcullis" => true,
        _ => return Err("usage: const_authz [ADDR] [--transport portcullis]".into()),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let server =
        tonic::transport::Server::builder().add_service(AuthorizationServer::new(Constant));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if ours {
        let incoming = tokio_stream::StreamExt::map(incoming, |conn| {
            conn.map(|c| {
                let _ = c.set_nodelay(true);
                portcullis::transport::net::Batched(c)
            })
        });
        server.serve_with_incoming(incoming).await?;
    } else {
        server.serve_with_incoming(incoming).await?;
    }
    Ok(())
}
