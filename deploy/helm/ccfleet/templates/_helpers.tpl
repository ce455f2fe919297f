{{/* Chart name, possibly overridden. */}}
{{- define "ccfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name, at most 63 characters. */}}
{{- define "ccfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ccfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: name + instance (+ component, passed as .component). */}}
{{- define "ccfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ccfleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* Every label; call with (dict "root" $ "component" "gateway"). */}}
{{- define "ccfleet.labels" -}}
helm.sh/chart: {{ include "ccfleet.chart" .root }}
{{ include "ccfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ccfleet
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ccfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ccfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ccfleet.secretName" -}}
{{- default (include "ccfleet.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* repository:tag, the tag defaulting to the chart's appVersion. Call with (dict "root" $ "image" .Values.x.image). */}}
{{- define "ccfleet.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/*
The NATS names the trigger needs, derived from config.nats.prefix exactly as
proto/src/names.rs derives them: queue_stream() = PREFIX (upper case, `-` → `_`) + "_QUEUE";
claim_consumer() = "claim". loadtest/tests/it/helm_names.rs fails when they drift.
*/}}
{{- define "ccfleet.queueStream" -}}
{{- printf "%s_QUEUE" (.Values.config.nats.prefix | upper | replace "-" "_") -}}
{{- end -}}
{{- define "ccfleet.claimConsumer" -}}
claim
{{- end -}}

{{/*
The configuration file: values' config plus the keys the chart owns, as TOML: one table
per section, values as JSON literals (JSON strings, numbers, booleans and arrays of them
are valid TOML).
*/}}
{{- define "ccfleet.toml" -}}
{{- $c := deepCopy .Values.config -}}
{{- $_ := set $c.gateway "listen" (printf "0.0.0.0:%d" (int .Values.gateway.containerPort)) -}}
{{- $_ := set $c.worker "metrics_listen" (printf "0.0.0.0:%d" (int .Values.worker.metricsPort)) -}}
{{- $_ := set $c.worker "runtime" .Values.worker.sessionRuntime -}}
{{- if and (eq .Values.worker.sessionRuntime "process") (eq (toString (get $c.worker "permission_mode")) "bypassPermissions") -}}
{{- fail "config.worker.permission_mode bypassPermissions needs worker.sessionRuntime docker: the process runtime has no sandbox (the worker refuses it at start)" -}}
{{- end -}}
{{- $_ := set $c.worker "image" (include "ccfleet.image" (dict "root" . "image" .Values.runner.image)) -}}
{{- range $section := keys $c | sortAlpha }}
[{{ $section }}]
{{- $keys := get $c $section }}
{{- range $key := keys $keys | sortAlpha }}
{{ $key }} = {{ get $keys $key | toJson }}
{{- end }}
{{ end -}}
{{- end -}}

{{/* Where worker pods mount the repositories' tokens: one file per repository, its name. */}}
{{- define "ccfleet.repositoryTokenDir" -}}
/run/secrets/ccfleet-repositories
{{- end -}}

{{/* The Secret the chart creates for tokens given as `value`. */}}
{{- define "ccfleet.repositoriesSecretName" -}}
{{- printf "%s-repositories" (include "ccfleet.fullname" . | trunc 50 | trimSuffix "-") -}}
{{- end -}}

{{/*
The workers' [[repositories]] tables: the values' camelCase keys under the file's names,
a key left out taking ccfleet's default, and the token as `token_file` (never its value:
this goes into a ConfigMap). Fails the render where the worker would refuse to start on
what the schema cannot see: a name used twice, a forge without a token.
*/}}
{{- define "ccfleet.repositoriesToml" -}}
{{- $seen := dict -}}
{{- range $i, $r := .Values.repositories }}
{{- if hasKey $seen $r.name }}
{{- fail (printf "repositories[%d]: the name %q is used by another repository" $i $r.name) }}
{{- end }}
{{- $_ := set $seen $r.name true }}
{{- if and (ne $r.provider "git") (not $r.token) }}
{{- fail (printf "repositories[%d] (%s): a %s repository needs a token (token.secretName + token.secretKey, or token.value)" $i $r.name $r.provider) }}
{{- end }}

[[repositories]]
name = {{ $r.name | toJson }}
url = {{ $r.url | toJson }}
provider = {{ $r.provider | toJson }}
{{- with $r.apiUrl }}
api_url = {{ . | toJson }}
{{- end }}
{{- with $r.username }}
username = {{ . | toJson }}
{{- end }}
{{- with $r.defaultBranch }}
default_branch = {{ . | toJson }}
{{- end }}
{{- with $r.channels }}
channels = {{ . | toJson }}
{{- end }}
{{- if hasKey $r "cloneDepth" }}
clone_depth = {{ $r.cloneDepth | int64 }}
{{- end }}
{{- if hasKey $r "maxPushFileBytes" }}
max_push_file_bytes = {{ $r.maxPushFileBytes | int64 }}
{{- end }}
{{- if $r.generatedFiles }}
generated_files = true
{{- end }}
{{- if $r.token }}
token_file = {{ printf "%s/%s" (include "ccfleet.repositoryTokenDir" $) $r.name | toJson }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment from the Secret: one entry per key the component uses. Call with (dict "root" $ "keys" (list ...)). */}}
{{- define "ccfleet.secretEnv" -}}
{{- $secret := include "ccfleet.secretName" .root -}}
{{- range .keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end -}}

{{/* The restricted container securityContext (Pod Security Standard "restricted"). */}}
{{- define "ccfleet.restrictedContainer" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Peers of an egress destination: its cidrs as ipBlocks, then its peers. Fails when a
destination the component needs has neither. Call with (dict "name" "nats" "dest" $d "required" true).
*/}}
{{- define "ccfleet.egressRule" -}}
{{- $d := .dest -}}
{{- if or $d.cidrs $d.peers }}
- to:
  {{- range $d.cidrs }}
    - ipBlock:
        cidr: {{ . }}
  {{- end }}
  {{- with $d.peers }}
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
  {{- range $d.ports }}
    - protocol: TCP
      port: {{ . }}
  {{- end }}
{{- else if .required }}
{{- fail (printf "networkPolicy.enabled needs networkPolicy.egress.%s.cidrs or .peers" .name) }}
{{- end }}
{{- end -}}

{{/* Egress to DNS (UDP and TCP 53). */}}
{{- define "ccfleet.dnsRule" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.peers | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}
