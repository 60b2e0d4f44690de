"""One Envoy with five listeners, one per configuration the benchmarks compare:
every route a `direct_response` (no upstream adds noise).

    envoy_config.py BASE_PORT CONST_PORT PORTCULLIS_PORT JWKS_FILE STOCK_CONST_PORT \
        HTTP_CONST_PORT HTTP_PORTCULLIS_PORT > envoy.yaml

- BASE_PORT+0 `none`: no authorization.
- BASE_PORT+1 `jwt_rbac`: Envoy's own jwt_authn (the same issuer, audience
  and keys) and RBAC doing the check portcullis does: GET, the route, the
  `tenant` claim equal to the route's tenant and `orders:read` in `scope`.
- BASE_PORT+2 `ext_const`: ext_authz to the constant-answer server, on
  portcullis' own transport (`--transport portcullis`).
- BASE_PORT+3 `ext_portcullis`: ext_authz to portcullis.
- BASE_PORT+4 `ext_const_stock`: ext_authz to the constant-answer server on
  stock tonic (Nagle on, vectored writes).
- BASE_PORT+5 `http_const`: ext_authz `http_service` to the constant HTTP
  server (`const_http_authz`): HTTP mode's floor.
- BASE_PORT+6 `http_portcullis`: ext_authz `http_service` to portcullis' HTTP
  listener, the tenant named by `headers_to_add`.
"""

import json
import sys

base, const_port, portcullis_port, jwks_file, stock_port, http_const_port, http_portcullis_port = sys.argv[1:8]
base = int(base)
jwks = open(jwks_file).read()
ISSUER = "https://idp.bench.example"

DIRECT = {"status": 200, "body": {"inline_string": "ok\n"}}


def route(ext_authz):
    r = {"match": {"prefix": "/"}, "direct_response": DIRECT}
    if ext_authz:
        r["typed_per_filter_config"] = {
            "envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": {"context_extensions": {"tenant": "acme"}},
            }
        }
    return r


ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def ext_authz(cluster):
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "0.5s"},
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},
        },
    }


def http_service(cluster, port):
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "http_service": {
                "server_uri": {"uri": f"http://127.0.0.1:{port}", "cluster": cluster, "timeout": "0.5s"},
                "path_prefix": "/authz",
                "authorization_request": {"headers_to_add": [{"key": "x-portcullis-tenant", "value": "acme"}]},
                "authorization_response": {
                    "allowed_upstream_headers": {"patterns": [{"prefix": "x-portcullis-"}, {"exact": "x-subject"}]}
                },
            },
            "allowed_headers": {"patterns": [{"exact": "authorization"}]},
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},
        },
    }


JWT = {
    "name": "envoy.filters.http.jwt_authn",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "bench": {
                "issuer": ISSUER,
                "audiences": ["orders-api"],
                "local_jwks": {"inline_string": jwks},
                "payload_in_metadata": "jwt_payload",
                "forward": True,
            }
        },
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
    },
}


def claim(key, matcher):
    return {
        "metadata": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": [{"key": "jwt_payload"}, {"key": key}],
            "value": {"string_match": matcher},
        }
    }


RBAC = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "orders": {
                    "permissions": [
                        {
                            "and_rules": {
                                "rules": [
                                    {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                                    {
                                        "url_path": {
                                            "path": {"safe_regex": {"regex": "/tenants/acme/orders/[^/]+"}}
                                        }
                                    },
                                ]
                            }
                        }
                    ],
                    "principals": [
                        {
                            "and_ids": {
                                "ids": [
                                    claim("tenant", {"exact": "acme"}),
                                    claim("scope", {"safe_regex": {"regex": "(.* )?orders:read( .*)?"}}),
                                ]
                            }
                        }
                    ],
                }
            },
        },
    },
}


def listener(name, port, filters, ext):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "route_config": {
                                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route(ext)]}]
                            },
                            "http_filters": filters + [ROUTER],
                        },
                    }
                ]
            }
        ],
    }


def cluster(name, port, http2=True):
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    ]
                }
            ],
        },
    }
    if not http2:
        del c["typed_extension_protocol_options"]
    return c


config = {
    "static_resources": {
        "listeners": [
            listener("none", base, [], False),
            listener("jwt_rbac", base + 1, [JWT, RBAC], False),
            listener("ext_const", base + 2, [ext_authz("const")], True),
            listener("ext_portcullis", base + 3, [ext_authz("portcullis")], True),
            listener("ext_const_stock", base + 4, [ext_authz("const_stock")], True),
            listener("http_const", base + 5, [http_service("http_const", int(http_const_port))], False),
            listener(
                "http_portcullis", base + 6, [http_service("http_portcullis", int(http_portcullis_port))], False
            ),
        ],
        "clusters": [
            cluster("const", int(const_port)),
            cluster("portcullis", int(portcullis_port)),
            cluster("const_stock", int(stock_port)),
            cluster("http_const", int(http_const_port), http2=False),
            cluster("http_portcullis", int(http_portcullis_port), http2=False),
        ],
    }
}
json.dump(config, sys.stdout, indent=1)
