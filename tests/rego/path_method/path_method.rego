package envoy.authz

import input.attributes.request.http as http_request

default allow := false

allow if {
	http_request.method == "GET"
	input.parsed_path == ["api", "v1", "products"]
}

allow if {
	http_request.method == "GET"
	input.parsed_path = ["api", "v1", "products", product_id]
	to_number(product_id) <= 100
}

allow if {
	http_request.method == "GET"
	input.parsed_path[0] == "search"
	input.parsed_query.lang == ["en"]
}
