package envoy.authz

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.attributes.request.http.headers["x-user"] != ""
}

headers["x-ext-auth-allow"] := "yes"

headers["x-validated-by"] := "security-checkpoint"

request_headers_to_remove := ["one-auth-header", "another-auth-header"]

response_headers_to_add["x-response-from"] := "authz"

status_code := 200 if allow

else := 401

body := "" if allow

else := "Unauthorized Request"

result["allowed"] := allow

result["headers"] := headers

result["request_headers_to_remove"] := request_headers_to_remove

result["response_headers_to_add"] := response_headers_to_add

result["body"] := body

result["http_status"] := status_code
