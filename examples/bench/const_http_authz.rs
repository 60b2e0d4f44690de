//! A constant-answer server for Envoy's ext_authz `http_service`: every
//! request is allowed (200) with one fixed header, nothing is read from it.
//!
//! It is the HTTP-mode benchmarks' floor (`tests/bench/run.sh`,
//! `BENCHMARKS.md`), as `const_authz` is gRPC's: the same axum, hyper and
//! tokio as portcullis' HTTP listener, so the gap between the two is the cost
//! of deciding. Never a server to deploy.
//!
//! `cargo run --release --example const_http_authz -- 127.0.0.1:9103`

use std::net::SocketAddr;

/// The allocator portcullis' binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9103")
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = axum::Router::new().fallback(|| async { ([("x-subject", "alice")], "") });
    axum::serve(listener, app).await?;
    Ok(())
}
