# The load benchmarks' RS256 check (examples/bench/fixtures.rs, tenant acme's
# allow rule) in Rego, for OPA-Envoy beside portcullis in tests/bench/run.sh:
# the bearer token verified against the fixtures' JWKS (data.bench.jwks, a
# string), its issuer and audience, then GET /tenants/{tenant}/orders/{order}
# with "orders:read" in the space-separated scope and the path's tenant equal
# to the token's. Unlike portcullis it checks no max_lifetime and keeps no
# verified-token cache: compare it with portcullis' cache-off figures.
package envoy.authz

import rego.v1

default allow := false

bearer := t if {
	auth := input.attributes.request.http.headers.authorization
	startswith(auth, "Bearer ")
	t := substring(auth, 7, -1)
}

claims := c if {
	[valid, _, c] := io.jwt.decode_verify(bearer, {
		"cert": data.bench.jwks,
		"iss": "https://idp.bench.example",
		"aud": "orders-api",
	})
	valid
}

allow if {
	input.attributes.request.http.method == "GET"
	["tenants", tenant, "orders", _] = input.parsed_path
	"orders:read" in split(claims.scope, " ")
	tenant == claims.tenant
}
