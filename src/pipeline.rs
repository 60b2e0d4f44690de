//! Floor 6: the request path, the stages chained in order: input → tenant →
//! identity → revocation → evaluate → respond.
//!
//! Each stage is a plain function over plain data, so the whole path runs without
//! a socket (the gRPC handler, `portcullis check` and the golden tests all call
//! [`Pipeline::check`]).
//!
//! Never imports: observability, transport or the app.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decision::mint::Minter;
use crate::decision::{ClientErrors, Decision, Reason, respond};
use crate::foundation::proto::auth::CheckRequest;
use crate::identity::revocation::RevocationList;
use crate::identity::shared_state::{SharedState, Unavailable};
use crate::identity::{self, Identity, IdentityError, Pending};
use crate::policy::budget::Budget;
use crate::policy::heavy;
use crate::policy::{CompiledTenant, DryRunHit, Evaluation, RuleTrace};
use crate::request::tenancy::TenantResolver;
use crate::request::{self, input::Input, input::Taken, input::unix_seconds};
use crate::tenants::store::PolicyStore;

/// The longest a check waits for an issuer's keys when Envoy sent no deadline.
pub const DEFAULT_KEY_WAIT: Duration = Duration::from_secs(2);

pub use crate::decision::DECISION_ID_HEADER;

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub store: Arc<PolicyStore>,
    pub tenancy: TenantResolver,
    /// Mints downstream tokens, when the server has signing keys.
    pub minter: Option<Arc<Minter>>,
    /// What a refused client is told when its tenant does not say
    /// (`client_errors` in the server config).
    pub client_errors: ClientErrors,
    /// Every heavy tenant's evaluations in flight together (shared by clones), at most
    /// [`heavy::heavy_share`] ([`crate::policy::heavy`]).
    heavy: Arc<heavy::HeavyGate>,
    /// The state replicas share (`shared_state` in the server config): DPoP
    /// proofs are recorded there rather than in this replica's cache, and live
    /// revocations are read from it. `None`: one replica, as before.
    shared: Option<Arc<dyn SharedState>>,
}

impl Pipeline {
    pub fn new(store: Arc<PolicyStore>, tenancy: TenantResolver) -> Pipeline {
        Pipeline {
            store,
            tenancy,
            minter: None,
            client_errors: ClientErrors::default(),
            heavy: Arc::new(heavy::HeavyGate::new(heavy::heavy_share())),
            shared: None,
        }
    }

    /// The state replicas share, when the server has one.
    pub fn shared_state(&self) -> Option<&Arc<dyn SharedState>> {
        self.shared.as_ref()
    }

    /// The state replicas share, when the server has a shared store.
    pub fn with_shared_state(mut self, shared: Option<Arc<dyn SharedState>>) -> Pipeline {
        self.shared = shared;
        self
    }

    pub fn with_minter(mut self, minter: Option<Arc<Minter>>) -> Pipeline {
        self.minter = minter;
        self
    }

    /// The server's `client_errors`, for tenants that do not choose.
    pub fn with_client_errors(mut self, client_errors: ClientErrors) -> Pipeline {
        self.client_errors = client_errors;
        self
    }

    /// Decides one request without waiting for anything: when an issuer's keys
    /// are not there yet, the answer is 503 `keys_unavailable`.
    pub fn check(&self, request: &CheckRequest) -> Decision {
        self.run(request, false, None).decision
    }

    /// Decides one request; when an issuer's keys must be fetched first, waits
    /// for that fetch (shared with every other check that needs it) at most
    /// `wait`, then decides again.
    pub async fn check_async(&self, request: &CheckRequest, wait: Duration) -> Decision {
        self.run_async(request, wait, false, None).await.decision
    }

    /// [`Pipeline::check_async`] for a caller who gives up at `deadline`:
    /// evaluation stops between conditions once it has passed (the answer, a
    /// deny, then reaches nobody; the worker is free again).
    pub async fn check_until(
        &self,
        request: &CheckRequest,
        wait: Duration,
        deadline: Option<Instant>,
    ) -> Decision {
        self.run_async(request, wait, false, deadline)
            .await
            .decision
    }

    /// [`Pipeline::check_until`] of a request whose header and
    /// context-extension maps the caller moved out of it
    /// ([`crate::request::input::take_maps`]), so reading it copies neither.
    pub async fn check_until_taken(
        &self,
        request: &CheckRequest,
        taken: Option<Taken>,
        wait: Duration,
        deadline: Option<Instant>,
    ) -> Decision {
        self.run_taken(request, taken, wait, false, deadline)
            .await
            .decision
    }

    /// [`Pipeline::check_async`], and what every candidate rule did.
    pub async fn explain_async(
        &self,
        request: &CheckRequest,
        wait: Duration,
    ) -> (Decision, Vec<RuleTrace>) {
        let run = self.run_async(request, wait, true, None).await;
        (run.decision, run.trace)
    }

    async fn run_async(
        &self,
        request: &CheckRequest,
        wait: Duration,
        explain: bool,
        deadline: Option<Instant>,
    ) -> Run {
        self.run_taken(request, None, wait, explain, deadline).await
    }

    async fn run_taken(
        &self,
        request: &CheckRequest,
        taken: Option<Taken>,
        wait: Duration,
        explain: bool,
        deadline: Option<Instant>,
    ) -> Run {
        let mut taken = taken;
        let mut front = self.front(request, &mut taken);
        if let Front::Done(run) = &mut front
            && let Some(pending) = run.pending.take()
        {
            pending.resolve(run.time, wait, self.shared.as_ref()).await;
            front = self.front(request, &mut taken);
        }
        let run = match front {
            Front::Done(run) => run,
            Front::Identified(mut known) => match known.identity.binding.replay.take() {
                None => self.back(known, explain, deadline),
                Some(ticket) => match self.record_shared(&mut known, &ticket).await {
                    Ok(()) => self.back(known, explain, deadline),
                    Err(()) => {
                        respond::hand_over(&mut known.decision, known.identity);
                        Run::of(known.decision, Vec::new(), None, known.time)
                    }
                },
            },
        };
        self.finish(run)
    }

    /// Records a DPoP proof in the shared store: one round trip, whose answer
    /// is final (a replay is refused, a store that cannot answer is 503, never
    /// this replica's own cache instead). `Err` once `known.decision` says why.
    async fn record_shared(
        &self,
        known: &mut Identified,
        ticket: &identity::binding::ReplayTicket,
    ) -> Result<(), ()> {
        let answer = match &self.shared {
            Some(shared) => {
                let now = unix_seconds(known.time);
                shared.record_once(&ticket.shared, ticket.ttl(now)).await
            }
            None => Err(Unavailable("no shared store")),
        };
        let refused = match answer {
            Ok(true) => return Ok(()),
            Ok(false) => identity::record_replay(&known.tenant.identity, &known.input, |_, _| {
                Err(identity::binding::BindingError::Replayed)
            }),
            Err(why) => {
                respond::shared_state_unavailable(&mut known.decision, &why);
                return Err(());
            }
        };
        if let Err(e) = refused {
            respond::refused(&mut known.decision, &known.tenant, &known.input, e);
        }
        Err(())
    }

    /// Decides one request and says what every candidate rule did.
    pub fn explain(&self, request: &CheckRequest) -> (Decision, Vec<RuleTrace>) {
        let run = self.run(request, true, None);
        (run.decision, run.trace)
    }

    /// One pass through the stages, with the server's `client_errors` where
    /// the tenant chose none.
    fn run(&self, request: &CheckRequest, explain: bool, deadline: Option<Instant>) -> Run {
        let run = match self.front(request, &mut None) {
            Front::Done(run) => run,
            // A proof to record in the shared store, and no way to wait for it
            // here: never this replica's own cache instead.
            Front::Identified(mut known) if known.identity.binding.replay.is_some() => {
                respond::shared_state_unavailable(
                    &mut known.decision,
                    &Unavailable("a check that cannot wait"),
                );
                respond::hand_over(&mut known.decision, known.identity);
                Run::of(known.decision, Vec::new(), None, known.time)
            }
            Front::Identified(known) => self.back(known, explain, deadline),
        };
        self.finish(run)
    }

    fn finish(&self, mut run: Run) -> Run {
        run.decision.client_errors.get_or_insert(self.client_errors);
        run
    }

    /// The stages up to the identity, in order; each is a plain function.
    /// `taken` holds the maps a caller moved out of `request`; they are given
    /// back in it when the check must run again (keys to wait for).
    fn front(&self, request: &CheckRequest, taken: &mut Option<Taken>) -> Front {
        let id = uuid::Uuid::new_v4().to_string();
        if !self.store.is_ready() {
            return Front::Done(Run::done(Decision::deny(id, Reason::NotReady)));
        }
        let moved = taken.is_some();
        let input = match request::read::read_taken(self.store.limits(), request, taken.take()) {
            Ok(input) => input,
            Err(e) => return Front::Done(Run::done(Decision::deny(id, e.reason()).with_detail(e))),
        };
        let Some(tenant) = self.tenancy.resolve(&input.resource, self.store.as_ref()) else {
            return Front::Done(Run::done(Decision::deny(id, Reason::UnknownTenant)));
        };
        let mut input = input;
        if tenant.rego().is_some() {
            // OPA-Envoy's document is the request itself, maps and all.
            input.check_message = if moved {
                let mut whole = request.clone();
                request::input::put_back(&mut whole, &taken_of(&input));
                request::protomap::message(&whole)
            } else {
                request::protomap::message(request)
            };
        }
        let mut decision = respond::begin(id, &tenant, &input);
        let time = input.context.time;
        let identity = match authenticate(&tenant, &input, self.shared.is_some()) {
            Ok(identity) => identity,
            Err(e) => {
                let pending = respond::refused(&mut decision, &tenant, &input, e);
                if moved && pending.is_some() {
                    *taken = Some(taken_of(&input));
                }
                return Front::Done(Run::of(decision, Vec::new(), pending, time));
            }
        };
        respond::identified(&mut decision, &identity);
        Front::Identified(Identified {
            decision,
            tenant,
            input,
            identity,
            time,
        })
    }

    /// The stages after the identity: revocation, evaluate, respond.
    fn back(&self, known: Identified, explain: bool, deadline: Option<Instant>) -> Run {
        let Identified {
            mut decision,
            tenant,
            input,
            identity,
            time,
        } = known;
        let trace = self.judge(
            &mut decision,
            &tenant,
            &input,
            &identity,
            explain,
            deadline,
            time,
        );
        respond::hand_over(&mut decision, identity);
        Run::of(decision, trace, None, time)
    }

    /// [`Pipeline::back`]'s stages, into `decision`; what every candidate
    /// rule did when asked.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        decision: &mut Decision,
        tenant: &CompiledTenant,
        input: &Input,
        identity: &Identity,
        explain: bool,
        deadline: Option<Instant>,
        time: std::time::SystemTime,
    ) -> Vec<RuleTrace> {
        let now = unix_seconds(time);
        // Checked on every request: a cached verification is no exemption.
        match self.store.revocation_list(&tenant.id) {
            Ok(Some(list)) => {
                if let Some(kind) = list.revoked(identity, now) {
                    respond::revoked(decision, tenant, input, kind);
                    return Vec::new();
                }
            }
            Ok(None) => {}
            // A list that cannot be loaded might name this caller: fail closed.
            Err(why) => {
                if crate::identity::revocation::revocable(identity) {
                    respond::revocation_unavailable(decision, &why);
                    return Vec::new();
                }
            }
        }
        // Revocations pushed through the shared store, unioned with the files.
        let live = match self.live_revocations(tenant, identity) {
            Ok(live) => live,
            Err(why) => {
                respond::shared_state_unavailable(decision, &why);
                return Vec::new();
            }
        };
        if let Some(kind) = live.and_then(|list| list.revoked(identity, now)) {
            respond::revoked(decision, tenant, input, kind);
            return Vec::new();
        }
        let Some(eval) = self.evaluate(tenant, input, identity, explain, deadline) else {
            // A heavy tenant with its share of checks in flight.
            decision.reason = Reason::Overloaded;
            return Vec::new();
        };
        let mint = self.minter.as_deref();
        respond::outcome(decision, tenant, identity, input, eval, mint, now)
    }

    /// The live revocations to check `identity` against: `None` for a tenant
    /// that does not ask for them (`identity.live_revocation`) or a caller no
    /// list could revoke; `Err` when they are needed and cannot be vouched for
    /// (unless the server chose to fail open on revocation alone: then the
    /// last copy read, however old, so nothing once revoked is let in again).
    pub(crate) fn live_revocations(
        &self,
        tenant: &CompiledTenant,
        identity: &Identity,
    ) -> Result<Option<Arc<RevocationList>>, Unavailable> {
        if !tenant.identity.live_revocation || !crate::identity::revocation::revocable(identity) {
            return Ok(None);
        }
        self.live_list(tenant)
    }

    /// The tenant's live revocations as the shared store vouches for them;
    /// under `fail_open_revocation_only`, the last copy read when it cannot.
    fn live_list(
        &self,
        tenant: &CompiledTenant,
    ) -> Result<Option<Arc<RevocationList>>, Unavailable> {
        let Some(shared) = &self.shared else {
            return Err(Unavailable("no shared store"));
        };
        match shared.live_revocations(&tenant.id) {
            Err(_) if shared.revocation_fails_open() => Ok(shared.last_revocations(&tenant.id)),
            other => other,
        }
    }

    /// The revocation lists a token that a Rego policy verifies itself
    /// (`io.jwt.*`) is checked against: the tenant's file list and, with
    /// `identity.live_revocation`, the live one, read whoever the caller is.
    fn token_revocations(&self, tenant: &CompiledTenant) -> crate::policy::rego_jwt::Revocations {
        let mut r = crate::policy::rego_jwt::Revocations::default();
        match self.store.revocation_list(&tenant.id) {
            Ok(Some(list)) => r.lists.push(list),
            Ok(None) => {}
            Err(_) => r.unavailable = true,
        }
        if tenant.identity.live_revocation {
            match self.live_list(tenant) {
                Ok(list) => r.lists.extend(list),
                Err(_) => r.unavailable = true,
            }
        }
        r
    }

    /// The evaluate stage, in its own span: the tenant's rules over the
    /// request, the caller and the tenant's data document, within the check's
    /// budget. A heavy tenant's evaluation runs off the async workers, at most
    /// its share at once: `None` when it has that many in flight.
    fn evaluate(
        &self,
        tenant: &CompiledTenant,
        input: &Input,
        identity: &Identity,
        explain: bool,
        deadline: Option<Instant>,
    ) -> Option<Evaluation> {
        let span = tracing::info_span!(
            "policy",
            rules = tenant.rule_count(),
            dry_run_rules = tracing::field::Empty,
        );
        let _entered = span.enter();
        let data = self.store.data(&tenant.id);
        let data = data.as_ref().map(|d| &d.value);
        let mut budget = Budget::new(deadline);
        let eval = match tenant.heavy() {
            // A Rego module's cost is not known before it runs (up to its
            // evaluation timer): it runs off the async workers, so other
            // tenants' checks keep being served meanwhile. It takes no heavy
            // share: its checks are bounded by the check permits alone.
            None if tenant.rego.is_some() => {
                // Read only for a policy that verifies tokens itself.
                let verifies = tenant.rego.as_ref().is_some_and(|r| r.verifies_tokens);
                let revocations = if verifies {
                    self.token_revocations(tenant)
                } else {
                    crate::policy::rego_jwt::Revocations::default()
                };
                heavy::off_the_workers(|| {
                    crate::policy::rego_jwt::with_revocations(revocations, || {
                        tenant.evaluate_within(input, identity, explain, data, &mut budget)
                    })
                })
            }
            None => tenant.evaluate_within(input, identity, explain, data, &mut budget),
            Some(gate) => {
                let _slot = gate.enter()?;
                let _all = self.heavy.enter()?;
                heavy::off_the_workers(|| {
                    tenant.evaluate_within(input, identity, explain, data, &mut budget)
                })
            }
        };
        if !eval.dry_run.is_empty() {
            span.record("dry_run_rules", dry_run_summary(&eval.dry_run).as_str());
        }
        Some(eval)
    }
}

/// The identity stage, in its own span: the caller's credential, validated
/// against the tenant's issuers. With a shared store a DPoP proof is left for
/// the caller to record there (`binding.replay`).
fn authenticate(
    tenant: &CompiledTenant,
    input: &Input,
    shared: bool,
) -> Result<Identity, IdentityError> {
    let span = tracing::info_span!(
        "identity",
        auth_method = tracing::field::Empty,
        reason = tracing::field::Empty,
    );
    let _entered = span.enter();
    let result = if shared {
        identity::identify(&tenant.identity, input)
    } else {
        identity::authenticate(&tenant.identity, input)
    };
    match &result {
        Ok(identity) => span.record("auth_method", identity.method.as_str()),
        Err(e) => span.record("reason", e.reason().code()),
    };
    result
}

/// The maps of `input` as [`crate::request::input::take_maps`] took them.
fn taken_of(input: &Input) -> Taken {
    Taken {
        headers: input.resource.headers.clone(),
        context_extensions: input.resource.context_extensions.clone(),
    }
}

/// `rule=would` pairs for a span attribute.
fn dry_run_summary(hits: &[DryRunHit]) -> String {
    hits.iter()
        .map(|h| format!("{}={}", h.rule, h.would))
        .collect::<Vec<_>>()
        .join(",")
}

/// What the stages up to the identity gave. Returned once per check and
/// taken apart at once: boxing the large variant would cost every check an
/// allocation to save a move.
#[allow(clippy::large_enum_variant)]
enum Front {
    /// Decided already (or waiting for keys: `pending`).
    Done(Run),
    Identified(Identified),
}

/// A caller identified, with what the later stages need.
struct Identified {
    decision: Decision,
    tenant: Arc<CompiledTenant>,
    input: Input,
    identity: Identity,
    time: std::time::SystemTime,
}

/// One pass through the stages.
struct Run {
    decision: Decision,
    trace: Vec<RuleTrace>,
    /// What the check needed and did not have: fetch it and run again.
    pending: Option<Pending>,
    /// The request time the check used.
    time: std::time::SystemTime,
}

impl Run {
    fn done(decision: Decision) -> Run {
        Run::of(decision, Vec::new(), None, std::time::UNIX_EPOCH)
    }

    fn of(
        decision: Decision,
        trace: Vec<RuleTrace>,
        pending: Option<Pending>,
        time: std::time::SystemTime,
    ) -> Run {
        Run {
            decision,
            trace,
            pending,
            time,
        }
    }
}
