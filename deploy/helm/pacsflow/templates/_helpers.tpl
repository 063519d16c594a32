{{/* Names. */}}
{{- define "pacsflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pacsflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The pacsflow version: values.appVersion, else the chart's appVersion. */}}
{{- define "pacsflow.appVersion" -}}
{{- default .Chart.AppVersion .Values.appVersion }}
{{- end }}

{{/* Labels of every resource; call with (dict "ctx" $ "component" "ingest"). */}}
{{- define "pacsflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pacsflow.selectorLabels" . }}
app.kubernetes.io/version: {{ include "pacsflow.appVersion" .ctx | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: pacsflow
{{- end }}

{{- define "pacsflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pacsflow.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* An image reference; call with (dict "ctx" $ "image" .Values.ingest.image "tag" "default-tag"). */}}
{{- define "pacsflow.image" -}}
{{- $repo := .image.repository }}
{{- with .ctx.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end }}
{{- printf "%s:%s" $repo (default .tag .image.tag) }}
{{- end }}

{{/* The understand image's default tag, for understand and generate: <appVersion>-pjrt
with the pjrt runtime, else -gpu or -cpu; call with (dict "ctx" $ "gpu" true). */}}
{{- define "pacsflow.modelImageTag" -}}
{{- $variant := ternary "gpu" "cpu" .gpu }}
{{- if eq .ctx.Values.understand.modelRuntime "pjrt" }}{{ $variant = "pjrt" }}{{ end }}
{{- printf "%s-%s" (include "pacsflow.appVersion" .ctx) $variant }}
{{- end }}

{{/* The flags that choose the model runtime, for understand and generate. */}}
{{- define "pacsflow.runtimeArgs" -}}
- {{ print "--model-runtime=" .Values.understand.modelRuntime | quote }}
{{- if eq .Values.understand.modelRuntime "pjrt" }}
- {{ print "--pjrt-plugin=" .Values.understand.pjrtPlugin | quote }}
{{- end }}
{{- end }}

{{/* The generate image: the understand image (repository, and tag when set) unless
generate.image says otherwise. */}}
{{- define "pacsflow.generateImage" -}}
{{- $u := .Values.understand.image }}
{{- $g := .Values.generate.image }}
{{- $img := dict "repository" (default $u.repository $g.repository) "tag" (default $u.tag $g.tag) }}
{{- include "pacsflow.image" (dict "ctx" . "image" $img "tag" (include "pacsflow.modelImageTag" (dict "ctx" . "gpu" .Values.generate.gpu.enabled))) }}
{{- end }}

{{/* Flags every service takes: NATS, the JetStream replicas, the store, the logs. */}}
{{- define "pacsflow.commonArgs" -}}
{{- if not .Values.nats.urlSecret.name }}
- {{ print "--nats-url=" (required "nats.url is required" .Values.nats.url) | quote }}
{{- end }}
- {{ print "--replicas=" (int .Values.nats.streamReplicas) | quote }}
- --storage=objectstore
- {{ print "--bucket=" (.Values.storage.bucket) | quote }}
- {{ print "--log-level=" (.Values.logging.level) | quote }}
- {{ print "--log-format=" (.Values.logging.format) | quote }}
{{- end }}

{{/* Environment every service gets: the NATS URL from a Secret, when set. */}}
{{- define "pacsflow.commonEnv" -}}
{{- with .Values.nats.urlSecret.name }}
- name: PACSFLOW_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.nats.urlSecret.key }}
{{- end }}
{{- end }}

{{/* GOMEMLIMIT from the container's memory limit (the Go services without TensorFlow). */}}
{{- define "pacsflow.gomemlimit" -}}
- name: GOMEMLIMIT
  valueFrom:
    resourceFieldRef:
      resource: limits.memory
      divisor: "1"
{{- end }}

{{/* Pod-level settings every pod shares. */}}
{{- define "pacsflow.podCommon" -}}
enableServiceLinks: false
automountServiceAccountToken: false
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Prometheus scrape annotations; call with (dict "ctx" $ "port" 8080). */}}
{{- define "pacsflow.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* HTTP probes; call with (dict "startupFailures" 30). */}}
{{- define "pacsflow.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 5
  failureThreshold: {{ .startupFailures }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
{{- end }}

{{/* The notify auth Secret's name. */}}
{{- define "pacsflow.notifyAuthSecret" -}}
{{- default (printf "%s-notify-auth" (include "pacsflow.fullname" .)) .Values.notify.auth.existingSecret }}
{{- end }}

{{/* The analytics key Secret's name. */}}
{{- define "pacsflow.analyticsKeySecret" -}}
{{- default (printf "%s-analytics-key" (include "pacsflow.fullname" .)) .Values.analytics.key.existingSecret }}
{{- end }}

{{/* The webhook secrets' Secret name, empty when there is none. */}}
{{- define "pacsflow.webhookSecret" -}}
{{- if .Values.notify.webhookSecrets.existingSecret }}
{{- .Values.notify.webhookSecrets.existingSecret }}
{{- else if .Values.notify.webhookSecrets.secrets }}
{{- printf "%s-webhook-secrets" (include "pacsflow.fullname" .) }}
{{- end }}
{{- end }}

{{/* The notify page's public URL. */}}
{{- define "pacsflow.publicURL" -}}
{{- if .Values.notify.publicURL }}
{{- .Values.notify.publicURL }}
{{- else if .Values.notify.ingress.enabled }}
{{- printf "https://%s/" .Values.notify.ingress.host }}
{{- end }}
{{- end }}

{{/* Checks of values that render but could never run. */}}
{{- define "pacsflow.validate" -}}
{{- if and (not .Values.ingest.allow) (not .Values.ingest.allowAnyAE) }}
{{- fail "ingest.allow is empty and ingest.allowAnyAE is false: pacsflow ingest refuses to listen beyond loopback without a calling AE allow-list" }}
{{- end }}
{{- if lt (int .Values.nats.streamReplicas) 1 }}
{{- fail "nats.streamReplicas must be 1 or more (3 on a 3-node NATS cluster)" }}
{{- end }}
{{- if and .Values.ingest.tls.enabled (not .Values.ingest.tls.secretName) }}
{{- fail "ingest.tls.enabled needs ingest.tls.secretName: a kubernetes.io/tls Secret (tls.crt, tls.key; ca.crt with clientCA)" }}
{{- end }}
{{- if and (eq .Values.understand.modelRuntime "pjrt") (not .Values.understand.pjrtPlugin) }}
{{- fail "understand.modelRuntime pjrt needs understand.pjrtPlugin: the PJRT plugin library in the image" }}
{{- end }}
{{- if .Values.understand.enabled }}
{{- if and (eq .Values.understand.model.source "pvc") (not .Values.understand.model.pvc.claimName) }}
{{- fail "understand.model.source pvc needs understand.model.pvc.claimName" }}
{{- end }}
{{- if and (eq .Values.understand.model.source "hostPath") (not .Values.understand.model.hostPath.path) }}
{{- fail "understand.model.source hostPath needs understand.model.hostPath.path" }}
{{- end }}
{{- end }}
{{- if .Values.generate.enabled }}
{{- if and (eq .Values.generate.model.source "pvc") (not .Values.generate.model.pvc.claimName) }}
{{- fail "generate.model.source pvc needs generate.model.pvc.claimName" }}
{{- end }}
{{- if and (eq .Values.generate.model.source "hostPath") (not .Values.generate.model.hostPath.path) }}
{{- fail "generate.model.source hostPath needs generate.model.hostPath.path" }}
{{- end }}
{{- end }}
{{- if .Values.notify.enabled }}
{{- if and (not .Values.notify.auth.token.enabled) (not .Values.notify.auth.users.enabled) }}
{{- fail "notify needs a credential: notify.auth.token.enabled or notify.auth.users.enabled (pacsflow notify refuses to serve patient data beyond loopback without one)" }}
{{- end }}
{{- if and .Values.notify.auth.users.enabled (not .Values.notify.auth.existingSecret) (not .Values.notify.auth.users.htpasswd) }}
{{- fail "notify.auth.users.enabled needs notify.auth.users.htpasswd (or notify.auth.existingSecret)" }}
{{- end }}
{{- end }}
{{- end }}
