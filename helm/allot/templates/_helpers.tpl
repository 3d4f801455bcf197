{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "allot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, prefixed with the chart name unless it already
contains it. Truncated to 63 characters (DNS-1123 label).
*/}}
{{- define "allot.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "allot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the server pods (must never change across upgrades).
*/}}
{{- define "allot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "allot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Common labels for every object.
*/}}
{{- define "allot.labels" -}}
helm.sh/chart: {{ include "allot.chart" . }}
{{ include "allot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: allot
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels for the migration Job (a different component, so server selectors never match it).
*/}}
{{- define "allot.migrationLabels" -}}
helm.sh/chart: {{ include "allot.chart" . }}
app.kubernetes.io/name: {{ include "allot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: migrations
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: allot
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Name of the server's ServiceAccount.
*/}}
{{- define "allot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "allot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the connection strings.
*/}}
{{- define "allot.secretName" -}}
{{- default (include "allot.fullname" .) .Values.existingSecret.name }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "allot.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
ALLOT_DATABASE_URL (required) and ALLOT_REDIS_URL (optional) from the existing Secret.
*/}}
{{- define "allot.secretEnv" -}}
- name: ALLOT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "allot.secretName" . }}
      key: {{ .Values.existingSecret.databaseUrlKey }}
{{- if .Values.existingSecret.redisUrlKey }}
- name: ALLOT_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "allot.secretName" . }}
      key: {{ .Values.existingSecret.redisUrlKey }}
      optional: true
{{- end }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express; fail rendering with a clear message.
*/}}
{{- define "allot.validate" -}}
{{- if and .Values.hpa.enabled (gt (int .Values.hpa.minReplicas) (int .Values.hpa.maxReplicas)) }}
{{- fail (printf "hpa.minReplicas (%d) must not exceed hpa.maxReplicas (%d)" (int .Values.hpa.minReplicas) (int .Values.hpa.maxReplicas)) }}
{{- end }}
{{- if and .Values.hpa.enabled (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "hpa.enabled needs resources.requests.cpu: CPU utilisation is a share of the request" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret" }}
{{- end }}
{{- if and .Values.tls.clientAuth.enabled (or (not .Values.tls.enabled) (not .Values.tls.clientAuth.existingSecret)) }}
{{- fail "tls.clientAuth.enabled needs tls.enabled and tls.clientAuth.existingSecret" }}
{{- end }}
{{- if and .Values.tls.enabled (or (eq (int .Values.tls.healthPort) (int .Values.containerPorts.grpc)) (and .Values.metrics.enabled (eq (int .Values.tls.healthPort) (int .Values.metrics.port)))) }}
{{- fail "tls.healthPort must differ from containerPorts.grpc and metrics.port" }}
{{- end }}
{{- if and .Values.jwt.enabled (or (not .Values.jwt.issuer) (not .Values.jwt.audience) (not .Values.jwt.existingSecret)) }}
{{- fail "jwt.enabled needs jwt.issuer, jwt.audience and jwt.existingSecret" }}
{{- end }}
{{- if and .Values.jwt.enabled (not .Values.jwt.hs256SecretKey) (not .Values.jwt.publicKeyKeys) }}
{{- fail "jwt.enabled needs jwt.hs256SecretKey or jwt.publicKeyKeys" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.containerPorts.grpc)) }}
{{- fail "metrics.port must differ from containerPorts.grpc" }}
{{- end }}
{{- end }}

{{/*
The port of the gRPC probes: the plaintext health-only port when serving TLS (kubelet's gRPC
probes cannot speak TLS), else the gRPC port.
*/}}
{{- define "allot.probePort" -}}
{{- if .Values.tls.enabled }}{{ .Values.tls.healthPort }}{{ else }}{{ .Values.containerPorts.grpc }}{{ end }}
{{- end }}
