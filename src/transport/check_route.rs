//! The gRPC route `envoy.service.auth.v3.Authorization/Check` as the server
//! mounts it: the generated service's shape (tonic's unary call, prost's
//! decoding of the `CheckRequest`), but the answer is the [`Decision`] itself,
//! written into the response frame by [`crate::decision::wire`] instead of
//! through a `CheckResponse` built for it. The bytes on the wire are the same
//! (`decision::wire` is tested against prost), so clients, Envoy and the
//! generated client see no difference.
//!
//! Never imports: the app, or the pipeline's stages.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::server::AuthzService;
use crate::decision::{Decision, wire};
use crate::foundation::proto::auth::authorization_server::SERVICE_NAME;
use crate::foundation::proto::auth::{CheckRequest, CheckResponse};

/// The path of the one method.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The `Authorization` service, answering `Check` with [`AuthzService::decide`].
#[derive(Debug, Clone)]
pub struct CheckRoute {
    service: Arc<AuthzService>,
}

impl CheckRoute {
    pub fn new(service: AuthzService) -> CheckRoute {
        CheckRoute {
            service: Arc::new(service),
        }
    }
}

impl NamedService for CheckRoute {
    const NAME: &'static str = SERVICE_NAME;
}

/// A decided check, on its way to [`AnswerEncoder`].
pub struct Answer(Decision);

struct CheckCall(Arc<AuthzService>);

impl UnaryService<CheckRequest> for CheckCall {
    type Response = Answer;
    type Future = BoxFuture<Response<Answer>, Status>;

    fn call(&mut self, request: Request<CheckRequest>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move {
            let (metadata, _, request) = request.into_parts();
            let decision = service.decide_owned(request, &metadata, "grpc").await;
            Ok(Response::new(Answer(decision)))
        })
    }
}

impl<B> Service<http::Request<B>> for CheckRoute
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            // As the generated service answers an unknown method.
            return Box::pin(async {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let call = CheckCall(Arc::clone(&self.service));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(AnswerCodec);
            Ok(grpc.unary(call, request).await)
        })
    }
}

/// prost's decoding of the request; the answer written by [`wire::encode`].
#[derive(Debug, Clone, Copy, Default)]
struct AnswerCodec;

impl Codec for AnswerCodec {
    type Encode = Answer;
    type Decode = CheckRequest;
    type Encoder = AnswerEncoder;
    type Decoder = <ProstCodec<CheckResponse, CheckRequest> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        AnswerEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<CheckResponse, CheckRequest>::raw_decoder(BufferSettings::default())
    }
}

#[derive(Debug, Clone)]
struct AnswerEncoder(PhantomData<Answer>);

impl Encoder for AnswerEncoder {
    type Item = Answer;
    type Error = Status;

    // Not inlined: `tests/bench/stages.sh` finds the encode by this name.
    #[inline(never)]
    fn encode(&mut self, item: Answer, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // `EncodeBuf` reserves as it is written to: no length pass needed.
        wire::encode(&item.0, buf);
        Ok(())
    }
}
