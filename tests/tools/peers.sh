#!/usr/bin/env bash
# The suite's heavier real peers, pinned here and nowhere else: Jaeger (built
# from its Go module), Keycloak (the server distribution from Maven Central)
# and OPA-Envoy (go install). Each is built or fetched once per version into a
# machine-wide cache that every clone reuses, then linked into .tools/peers/;
# a missing cache entry is redone, a present one costs nothing.
#
#   tests/tools/peers.sh            # all three
#   tests/tools/peers.sh jaeger     # just one (jaeger | keycloak | opa-envoy)
set -euo pipefail

JAEGER_VERSION=v1.75.0          # the commit of Jaeger 2.12.0
KEYCLOAK_VERSION=26.5.5         # org.keycloak:keycloak-quarkus-dist
OPA_ENVOY_VERSION=v1.12.0-envoy # github.com/open-policy-agent/opa-envoy-plugin

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${PORTCULLIS_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-peers}
LINKS=$ROOT/.tools/peers
mkdir -p "$CACHE" "$LINKS"

# Builds into DIR.tmp and renames it into place, so an interrupted build never
# leaves a half-filled entry that looks done.
finish() { mv "$1.tmp" "$1"; }

# Downloads one module version into the Go module cache (read-only there) and
# prints its directory.
module_dir() {
	go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

jaeger() {
	local dir=$CACHE/jaeger-$JAEGER_VERSION
	if [ ! -x "$dir/jaeger" ]; then
		echo "peers: building Jaeger $JAEGER_VERSION into $dir" >&2
		rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
		# Its go.mod carries a replace directive, which `go install mod@v`
		# refuses; building inside the downloaded module honours it.
		local src
		src=$(module_dir "github.com/jaegertracing/jaeger@$JAEGER_VERSION")
		(cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags=-s \
			-o "$dir.tmp/jaeger" ./cmd/jaeger)
		finish "$dir"
	fi
	ln -sfn "$dir/jaeger" "$LINKS/jaeger"
}

keycloak() {
	local dir=$CACHE/keycloak-$KEYCLOAK_VERSION
	if [ ! -x "$dir/bin/kc.sh" ]; then
		echo "peers: fetching Keycloak $KEYCLOAK_VERSION into $dir" >&2
		rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
		# Maven resolves and checks the artifact (and honours any mirror in
		# ~/.m2/settings.xml); the archive is then unpacked from its repository.
		mvn -q -B dependency:copy \
			"-Dartifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:tar.gz" \
			"-DoutputDirectory=$dir.tmp" -Dmdep.stripVersion=false
		tar -xzf "$dir.tmp/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz" \
			-C "$dir.tmp" --strip-components=1
		rm "$dir.tmp/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz"
		finish "$dir"
	fi
	ln -sfn "$dir" "$LINKS/keycloak"
}

opa_envoy() {
	local dir=$CACHE/opa-envoy-$OPA_ENVOY_VERSION
	if [ ! -x "$dir/opa-envoy-plugin" ]; then
		echo "peers: building OPA-Envoy $OPA_ENVOY_VERSION into $dir" >&2
		rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
		# `go install mod@version` would also ask the module proxy for the
		# module's version list (to report deprecation), which the proxy
		# here refuses; downloading the one version and building inside it
		# asks only for that version and its go.sum's dependencies.
		local src
		src=$(module_dir "github.com/open-policy-agent/opa-envoy-plugin@$OPA_ENVOY_VERSION")
		(cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags=-s \
			-o "$dir.tmp/opa-envoy-plugin" ./cmd/opa-envoy-plugin)
		finish "$dir"
	fi
	ln -sfn "$dir/opa-envoy-plugin" "$LINKS/opa-envoy-plugin"
}

if [ $# -eq 0 ]; then set -- jaeger keycloak opa-envoy; fi
for peer in "$@"; do
	case $peer in
	jaeger) jaeger ;;
	keycloak) keycloak ;;
	opa-envoy) opa_envoy ;;
	*) echo "peers: unknown peer $peer" >&2 && exit 2 ;;
	esac
done
