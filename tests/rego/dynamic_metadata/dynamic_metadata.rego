package envoy.authz

default allow := false

allow if input.attributes.request.http.method == "GET"

result["allowed"] := allow

result["dynamic_metadata"] := {"team": "payments", "checked_path": input.attributes.request.http.path}
