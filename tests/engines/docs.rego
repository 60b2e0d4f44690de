package envoy.authz

default allow := false

claims := input.portcullis.claims

method := input.attributes.request.http.method

own if {
	["users", owner, "docs", doc] = input.parsed_path
	doc != "locked"
	owner == claims.sub
}

allow if {
	own
	method == "GET"
	"docs:read" in claims.scope
}

allow if {
	own
	method in {"PUT", "DELETE"}
	"docs:write" in claims.scope
}
