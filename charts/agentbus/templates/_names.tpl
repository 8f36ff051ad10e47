{{/* Names, labels, selectors and the image of the agentbus objects. */}}

{{/* Names ------------------------------------------------------------------------ */}}

{{- define "agentbus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agentbus.fullname" -}}
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

{{- define "agentbus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The component label and object name suffix of each service key. */}}
{{- define "agentbus.component" -}}
{{- $root := .root }}
{{- if eq .service "worker" }}
{{- printf "%s-worker" $root.Values.worker.skill }}
{{- else if eq .service "archiver" }}
{{- "event-archiver" }}
{{- else }}
{{- .service }}
{{- end }}
{{- end }}

{{/* The long-running services of this release, as a JSON list. */}}
{{- define "agentbus.services" -}}
{{- $out := list "orchestrator" "worker" "archiver" }}
{{- if .Values.gateway.enabled }}
{{- $out = append $out "gateway" }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "agentbus.componentName" -}}
{{- printf "%s-%s" (include "agentbus.fullname" .root) (include "agentbus.component" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agentbus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentbus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------- */}}

{{- define "agentbus.labels" -}}
helm.sh/chart: {{ include "agentbus.chart" . }}
app.kubernetes.io/name: {{ include "agentbus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentbus
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one service: dict "root" $ "service" "worker" */}}
{{- define "agentbus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentbus.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ include "agentbus.component" . }}
{{- end }}

{{- define "agentbus.componentLabels" -}}
{{ include "agentbus.labels" .root }}
app.kubernetes.io/component: {{ include "agentbus.component" . }}
{{- end }}

{{/* Image -------------------------------------------------------------------------- */}}

{{/* registry/repository:tag (or @digest): image.registry, else the NATS chart's
     global.image.registry (one setting for a mirror of every image of the release). */}}
{{- define "agentbus.image" -}}
{{- $img := .Values.image }}
{{- $registry := $img.registry | default (dig "image" "registry" "" (.Values.global | default dict)) }}
{{- $repo := ternary (printf "%s/%s" (trimSuffix "/" $registry) $img.repository) $img.repository (ne $registry "") }}
{{- if $img.digest }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets of every pod of ours: imagePullSecrets, then the NATS chart's
     global.image.pullSecretNames (names), without duplicates. */}}
{{- define "agentbus.imagePullSecrets" -}}
{{- $names := list }}
{{- range .Values.imagePullSecrets }}
{{- if kindIs "string" . }}
{{- $names = append $names . }}
{{- else }}
{{- $names = append $names (get . "name") }}
{{- end }}
{{- end }}
{{- range (dig "image" "pullSecretNames" list (.Values.global | default dict)) }}
{{- $names = append $names . }}
{{- end }}
{{- with $names | uniq }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}
