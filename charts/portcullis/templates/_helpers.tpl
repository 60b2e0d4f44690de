{{/*
Names. Every object lives in the release's namespace, so two releases with the same
name in two namespaces never collide; the only mesh-wide name (the Istio provider)
carries the namespace.
*/}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The meshConfig.extensionProviders name: mesh-wide, so it names the namespace. */}}
{{- define "portcullis.istioProvider" -}}
{{- if .Values.istio.provider }}
{{- .Values.istio.provider }}
{{- else if eq .Values.mode "sidecar" }}
{{- printf "portcullis-local-%s" .Release.Namespace }}
{{- else }}
{{- printf "portcullis-%s" .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The ServiceEntry host of the localhost provider (sidecar mode). */}}
{{- define "portcullis.localHost" -}}
{{- printf "portcullis-local.%s.internal" .Release.Namespace }}
{{- end }}

{{- define "portcullis.configName" -}}
{{- printf "%s-config" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.policiesName" -}}
{{- printf "%s-policies" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the pod sees its files. */}}
{{- define "portcullis.configDir" -}}/etc/portcullis/config{{- end }}
{{- define "portcullis.policyDir" -}}/etc/portcullis/policies{{- end }}
{{- define "portcullis.secretDir" -}}/etc/portcullis/secrets{{- end }}

{{/*
The server configuration file. In service mode both ports listen on every pod
address (the Service and the kubelet's gRPC probes need them); in sidecar mode the
admin port stays on loopback, and gRPC still listens on the pod address because
kubelet probes cannot reach loopback.
*/}}
{{- define "portcullis.serverConfig" -}}
{{- $s := .Values.server -}}
listen: "0.0.0.0:{{ .Values.ports.grpc }}"
{{- if eq .Values.mode "sidecar" }}
admin_listen: "127.0.0.1:{{ .Values.ports.admin }}"
{{- else }}
admin_listen: "0.0.0.0:{{ .Values.ports.admin }}"
{{- end }}
policies: {{ include "portcullis.policyDir" . }}
tenancy:
  sources: {{ toJson $s.tenancy.sources }}
  context_key: {{ $s.tenancy.contextKey | quote }}
  {{- if $s.tenancy.header }}
  header: {{ $s.tenancy.header | quote }}
  {{- end }}
reload:
  debounce: {{ $s.reload.debounce }}
  rescan_interval: {{ $s.reload.rescanInterval }}
shutdown_grace: {{ $s.shutdownGraceSeconds }}s
log_format: {{ $s.logFormat }}
client_errors: {{ $s.clientErrors | default "generic" }}
{{- /* Policies may name files in the mounted Secrets, except those that hold
     token-exchange signing keys and those marked policyFiles: false. A Secret
     with a tenant is that tenant's alone (policy_files.tenants). */}}
{{- $dirs := list }}
{{- $tenants := dict }}
{{- range .Values.secrets }}
{{- $dir := printf "%s/%s" (include "portcullis.secretDir" $) .name }}
{{- $allowed := true }}
{{- if hasKey . "policyFiles" }}{{ $allowed = .policyFiles }}{{ end }}
{{- range $s.tokenExchange.keys }}
{{- if hasPrefix (printf "%s/" $dir) (toString .file) }}{{ $allowed = false }}{{ end }}
{{- end }}
{{- if and $allowed .tenant }}
{{- $_ := set $tenants .tenant (append (get $tenants .tenant | default list) $dir) }}
{{- else if $allowed }}{{ $dirs = append $dirs $dir }}{{ end }}
{{- end }}
policy_files:
  allowed_dirs: {{ toJson $dirs }}
{{- if $tenants }}
  tenants: {{ toJson $tenants }}
{{- end }}
{{- if $s.tokenExchange.issuer }}
token_exchange:
  issuer: {{ $s.tokenExchange.issuer | quote }}
  keys: {{ toJson $s.tokenExchange.keys }}
{{- end }}
{{- with $s.limits }}
limits: {{ toJson . }}
{{- end }}
{{- with $s.connections }}
connections: {{ toJson . }}
{{- end }}
{{- with .Values.authzen }}
{{- if .enabled }}
authzen:
  listen: "0.0.0.0:{{ .port }}"
  {{- if .publicUrl }}
  public_url: {{ .publicUrl | quote }}
  {{- end }}
  askers: {{ toJson .askers }}
{{- end }}
{{- end }}
{{- if $s.http.enabled }}
http:
  {{- if eq .Values.mode "sidecar" }}
  listen: "127.0.0.1:{{ .Values.ports.http }}"
  {{- else }}
  listen: "0.0.0.0:{{ .Values.ports.http }}"
  {{- end }}
  path_prefix: {{ $s.http.pathPrefix | quote }}
  {{- if $s.http.tenantHeader }}
  tenant_header: {{ $s.http.tenantHeader | quote }}
  {{- end }}
  trusted_proxies: {{ toJson $s.http.trustedProxies }}
{{- end }}
{{- with .Values.sharedState }}
{{- if .enabled }}
shared_state:
  redis:
    url_file: {{ printf "/etc/portcullis/shared-state/%s" .urlKey | quote }}
    {{- if .passwordKey }}
    password_file: {{ printf "/etc/portcullis/shared-state/%s" .passwordKey | quote }}
    {{- if .username }}
    username: {{ .username | quote }}
    {{- end }}
    {{- end }}
    {{- if .tls.caSecret }}
    tls:
      ca_file: {{ printf "/etc/portcullis/shared-state-ca/%s" .tls.caKey | quote }}
    {{- end }}
    timeout: {{ .timeout }}
    revocation_refresh: {{ .revocationRefresh }}
    revocation_on_unavailable: {{ .revocationOnUnavailable }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails the render on values that would make a broken or unsafe install. */}}
{{- define "portcullis.checks" -}}
{{- if and .Values.authzen.enabled (not .Values.authzen.askers) }}
{{- fail "authzen.askers must name at least one asker when authzen.enabled is true" }}
{{- end }}
{{- if and .Values.server.http.enabled (not .Values.server.http.trustedProxies) }}
{{- fail "server.http.trustedProxies must name the proxies' addresses (CIDRs) when server.http.enabled" }}
{{- end }}
{{- if and .Values.sharedState.enabled (not .Values.sharedState.existingSecret) }}
{{- fail "sharedState.existingSecret is required when sharedState.enabled is true (a Secret with the Redis URL)" }}
{{- end }}
{{- if and (has "header" .Values.server.tenancy.sources) (not .Values.server.tenancy.header) }}
{{- fail "server.tenancy.header is required when server.tenancy.sources includes header" }}
{{- end }}
{{- $total := 0 }}
{{- range $name, $text := .Values.policies.files }}
{{- $total = add $total (len $text) }}
{{- end }}
{{- if gt (int $total) 1000000 }}
{{- fail (printf "policies.files hold %d bytes; a ConfigMap holds at most 1 MiB: split them into policies.existingConfigMaps" (int $total)) }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.callers) }}
{{- fail "networkPolicy.callers is empty: a NetworkPolicy rule with an empty from admits every source; list the callers' pods or namespaces" }}
{{- end }}
{{- if .Values.istio.authorizationPolicy.enabled }}
{{- if not .Values.istio.workloadSelector }}
{{- fail "istio.workloadSelector must name at least one label: without a selector the policy would also cover portcullis' own pods" }}
{{- end }}
{{- if not .Values.istio.authorizationPolicy.rules }}
{{- fail "istio.authorizationPolicy.rules is empty: a CUSTOM policy without rules sends no request to portcullis; use [{}] for every request" }}
{{- end }}
{{- end }}
{{- if eq .Values.mode "service" }}
{{- $own := merge (dict) .Values.podLabels (include "portcullis.selectorLabels" . | fromYaml) }}
{{- $covers := true }}
{{- range $k, $v := .Values.istio.workloadSelector }}
{{- if ne (toString (get $own $k)) (toString $v) }}{{ $covers = false }}{{ end }}
{{- end }}
{{- if and .Values.istio.workloadSelector $covers }}
{{- fail "istio.workloadSelector matches portcullis' own pods: portcullis would be asked to authorize its own checks; remove that label from podLabels" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Whether the release owns a policy ConfigMap: when it has inline files, or when there
is no other source (an empty ConfigMap keeps the volume valid; the pods stay unready).
*/}}
{{- define "portcullis.ownPolicies" -}}
{{- if or .Values.policies.files (not .Values.policies.existingConfigMaps) }}true{{ end }}
{{- end }}

{{/* The policy volume: the chart's ConfigMap and any existing ones, projected into one directory. */}}
{{- define "portcullis.policyVolume" -}}
- name: portcullis-policies
  projected:
    sources:
      {{- if include "portcullis.ownPolicies" . }}
      - configMap:
          name: {{ include "portcullis.policiesName" . }}
      {{- end }}
      {{- range .Values.policies.existingConfigMaps }}
      - configMap:
          name: {{ . }}
      {{- end }}
{{- end }}

{{/* Every volume the portcullis container mounts. */}}
{{- define "portcullis.volumes" -}}
- name: portcullis-config
  configMap:
    name: {{ include "portcullis.configName" . }}
{{ include "portcullis.policyVolume" . }}
{{- range .Values.secrets }}
- name: portcullis-secret-{{ .name }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
{{- end }}
{{- if .Values.sharedState.enabled }}
- name: portcullis-shared-state
  secret:
    secretName: {{ .Values.sharedState.existingSecret }}
    defaultMode: 0440
{{- if .Values.sharedState.tls.caSecret }}
- name: portcullis-shared-state-ca
  secret:
    secretName: {{ .Values.sharedState.tls.caSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{/*
The portcullis container: the Deployment's, and in sidecar mode the one to add to
each workload pod.
*/}}
{{- define "portcullis.container" -}}
- name: portcullis
  image: {{ include "portcullis.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - serve
    - --config
    - {{ include "portcullis.configDir" . }}/portcullis.yaml
  ports:
    - name: grpc
      containerPort: {{ .Values.ports.grpc }}
      protocol: TCP
    {{- if eq .Values.mode "service" }}
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
    {{- end }}
    {{- if .Values.authzen.enabled }}
    - name: authzen
      containerPort: {{ .Values.authzen.port }}
      protocol: TCP
    {{- end }}
    {{- if .Values.server.http.enabled }}
    - name: http-authz
      containerPort: {{ .Values.ports.http }}
      protocol: TCP
    {{- end }}
  env:
    - name: RUST_LOG
      value: {{ .Values.server.logLevel | quote }}
    {{- if .Values.otel.endpoint }}
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: {{ .Values.otel.endpoint | quote }}
    - name: OTEL_EXPORTER_OTLP_PROTOCOL
      value: {{ .Values.otel.protocol | quote }}
    - name: OTEL_TRACES_SAMPLER
      value: {{ .Values.otel.sampler | quote }}
    - name: OTEL_TRACES_SAMPLER_ARG
      value: {{ .Values.otel.samplerArg | quote }}
    - name: OTEL_SERVICE_NAME
      value: {{ default (include "portcullis.fullname" .) .Values.otel.serviceName | quote }}
    - name: OTEL_RESOURCE_ATTRIBUTES
      value: {{ printf "k8s.namespace.name=%s" .Release.Namespace | quote }}
    # Resource attributes k8s.pod.name and k8s.namespace.name on every span.
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- end }}
  # grpc.health.v1 on the gRPC port: SERVING once policies have loaded, NOT_SERVING
  # before that and from the moment shutdown begins.
  startupProbe:
    grpc:
      port: {{ .Values.ports.grpc }}
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  livenessProbe:
    grpc:
      port: {{ .Values.ports.grpc }}
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  readinessProbe:
    grpc:
      port: {{ .Values.ports.grpc }}
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ .Values.preStopSleepSeconds }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: portcullis-config
      mountPath: {{ include "portcullis.configDir" . }}
      readOnly: true
    - name: portcullis-policies
      mountPath: {{ include "portcullis.policyDir" . }}
      readOnly: true
    {{- range .Values.secrets }}
    - name: portcullis-secret-{{ .name }}
      mountPath: {{ include "portcullis.secretDir" $ }}/{{ .name }}
      readOnly: true
    {{- end }}
    {{- if .Values.sharedState.enabled }}
    - name: portcullis-shared-state
      mountPath: /etc/portcullis/shared-state
      readOnly: true
    {{- if .Values.sharedState.tls.caSecret }}
    - name: portcullis-shared-state-ca
      mountPath: /etc/portcullis/shared-state-ca
      readOnly: true
    {{- end }}
    {{- end }}
{{- end }}

{{/* preStop sleep, then the server's own grace, then slack before SIGKILL. */}}
{{- define "portcullis.terminationGracePeriodSeconds" -}}
{{- add .Values.preStopSleepSeconds .Values.server.shutdownGraceSeconds 5 }}
{{- end }}

{{/* Pod annotations a workload needs in sidecar mode under Istio. */}}
{{- define "portcullis.sidecarPodAnnotations" -}}
# Istio's agent answers the kubelet's gRPC probes on the workload's behalf, so they
# work under STRICT mTLS (this is Istio's default; set explicitly so it stays on).
sidecar.istio.io/rewriteAppHTTPProbers: "true"
{{- end }}
