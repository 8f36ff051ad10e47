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

{{- define "agentbus.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}

{{/* NATS --------------------------------------------------------------------------- */}}

{{/* The NATS subchart's full name (its own naming rule, for the alias `nats`). */}}
{{- define "agentbus.natsFullname" -}}
{{- $n := .Values.nats }}
{{- if $n.fullnameOverride }}
{{- $n.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" $n.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agentbus.natsPort" -}}
{{- $port := 4222 }}
{{- with .Values.nats.config }}{{ with .nats }}{{ with .port }}{{ $port = . }}{{ end }}{{ end }}{{ end }}
{{- $port | int }}
{{- end }}

{{- define "agentbus.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- $scheme := ternary "tls" "nats" (ne .Values.natsTls.existingSecret "") }}
{{- $svc := include "agentbus.natsFullname" . }}
{{- with .Values.nats.service }}{{ with .name }}{{ $svc = . }}{{ end }}{{ end }}
{{- printf "%s://%s:%s" $scheme $svc (include "agentbus.natsPort" .) }}
{{- else if .Values.externalNats.url }}
{{- .Values.externalNats.url }}
{{- else }}
{{- fail "externalNats.url is required when nats.enabled is false" }}
{{- end }}
{{- end }}

{{/* host:port of the NATS monitoring endpoint through the headless service (KEDA). */}}
{{- define "agentbus.natsMonitoringEndpoint" -}}
{{- if .Values.nats.enabled }}
{{- $headless := printf "%s-headless" (include "agentbus.natsFullname" .) }}
{{- with .Values.nats.headlessService }}{{ with .name }}{{ $headless = . }}{{ end }}{{ end }}
{{- $port := 8222 }}
{{- with .Values.nats.config }}{{ with .monitor }}{{ with .port }}{{ $port = . }}{{ end }}{{ end }}{{ end }}
{{- printf "%s.%s.svc.cluster.local:%d" $headless .Release.Namespace ($port | int) }}
{{- else if .Values.externalNats.monitoringEndpoint }}
{{- .Values.externalNats.monitoringEndpoint }}
{{- else }}
{{- fail "externalNats.monitoringEndpoint is required for worker.keda with nats.enabled false" }}
{{- end }}
{{- end }}

{{/* NATS credentials of one service: natsAuth.services.<service> over natsAuth. */}}
{{- define "agentbus.natsAuth" -}}
{{- $auth := omit .root.Values.natsAuth "services" | deepCopy }}
{{- $own := get (.root.Values.natsAuth.services | default dict) .service | default dict }}
{{- /* a key set for the service wins, even when empty (to turn a default off) */}}
{{- range $key, $val := $own }}
{{- $_ := set $auth $key $val }}
{{- end }}
{{- toJson $auth }}
{{- end }}

{{/* Environment -------------------------------------------------------------------- */}}

{{/* One setting value as an env string: lists and maps as JSON, whole floats as ints. */}}
{{- define "agentbus.envValue" -}}
{{- if or (kindIs "slice" .) (kindIs "map" .) }}
{{- toJson . }}
{{- else if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* Add a settings map (section -> name -> value) to dict .env as AGENTBUS_* names. */}}
{{- define "agentbus.addSettings" -}}
{{- $env := .env }}
{{- range $section, $val := .settings }}
{{- if kindIs "map" $val }}
{{- range $name, $x := $val }}
{{- $_ := set $env (printf "AGENTBUS_%s__%s" (upper $section) (upper $name)) (include "agentbus.envValue" $x) }}
{{- end }}
{{- else }}
{{- $_ := set $env (printf "AGENTBUS_%s" (upper $section)) (include "agentbus.envValue" $val) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The env list of one agentbus container: dict "root" $ "service" "worker". */}}
{{- define "agentbus.env" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $svc := .service }}
{{- $own := get $v $svc | default dict }}
{{- $auth := include "agentbus.natsAuth" . | fromJson }}
{{- $env := dict }}
{{- /* typed values */}}
{{- $_ := set $env "AGENTBUS_LOG_LEVEL" (toString $v.logLevel) }}
{{- $_ := set $env "AGENTBUS_LOG_FORMAT" (toString $v.logFormat) }}
{{- $_ := set $env "AGENTBUS_TOPOLOGY__REPLICAS" (include "agentbus.envValue" $v.topology.replicas) }}
{{- $_ := set $env "AGENTBUS_TOPOLOGY__STORAGE" (toString $v.topology.storage) }}
{{- $_ := set $env "AGENTBUS_TOPOLOGY__MAX_DELIVER" (include "agentbus.envValue" $v.topology.maxDeliver) }}
{{- $_ := set $env "AGENTBUS_TOPOLOGY__ACK_WAIT_S" (include "agentbus.envValue" $v.topology.ackWaitSeconds) }}
{{- $_ := set $env "AGENTBUS_WORKER__GRACE_PERIOD_S" (include "agentbus.envValue" $v.gracePeriodSeconds) }}
{{- if eq $svc "orchestrator" }}
{{- $_ := set $env "AGENTBUS_ORCHESTRATOR__CONCURRENCY" (include "agentbus.envValue" $own.concurrency) }}
{{- end }}
{{- if eq $svc "worker" }}
{{- $_ := set $env "AGENTBUS_WORKER__SKILL" (toString $own.skill) }}
{{- $_ := set $env "AGENTBUS_WORKER__CONCURRENCY" (include "agentbus.envValue" $own.concurrency) }}
{{- $_ := set $env "AGENTBUS_SUMMARIZER__BACKEND" (toString $own.summarizer.backend) }}
{{- with $own.summarizer.openai.baseUrl }}
{{- $_ := set $env "AGENTBUS_SUMMARIZER__OPENAI_BASE_URL" (toString .) }}
{{- end }}
{{- with $own.summarizer.openai.model }}
{{- $_ := set $env "AGENTBUS_SUMMARIZER__OPENAI_MODEL" (toString .) }}
{{- end }}
{{- end }}
{{- /* free-form settings: global, then the service's own */}}
{{- include "agentbus.addSettings" (dict "env" $env "settings" ($v.settings | default dict)) }}
{{- include "agentbus.addSettings" (dict "env" $env "settings" ($own.settings | default dict)) }}
{{- /* the chart's own wiring always wins */}}
{{- $_ := set $env "AGENTBUS_NATS__URL" (include "agentbus.natsUrl" $root) }}
{{- if has $svc (list "orchestrator" "worker" "archiver") }}
{{- $_ := set $env "AGENTBUS_HTTP__PORT" (include "agentbus.envValue" $v.http.port) }}
{{- end }}
{{- with $auth.inboxPrefix }}
{{- $_ := set $env "AGENTBUS_NATS__INBOX_PREFIX" (toString .) }}
{{- end }}
{{- if and $auth.existingSecret $auth.credsKey }}
{{- $_ := set $env "AGENTBUS_NATS__CREDS_FILE" (printf "/etc/agentbus/nats-creds/%s" $auth.credsKey) }}
{{- end }}
{{- with $v.natsTls.existingSecret }}
{{- $_ := set $env "AGENTBUS_NATS__TLS_CA_FILE" (printf "/etc/agentbus/nats-tls/%s" $v.natsTls.caKey) }}
{{- if and $v.natsTls.certKey $v.natsTls.keyKey }}
{{- $_ := set $env "AGENTBUS_NATS__TLS_CERT_FILE" (printf "/etc/agentbus/nats-tls/%s" $v.natsTls.certKey) }}
{{- $_ := set $env "AGENTBUS_NATS__TLS_KEY_FILE" (printf "/etc/agentbus/nats-tls/%s" $v.natsTls.keyKey) }}
{{- end }}
{{- end }}
{{- $secretEnv := list }}
{{- if $auth.existingSecret }}
{{- if $auth.userKey }}{{ $secretEnv = append $secretEnv (list "AGENTBUS_NATS__USER" $auth.existingSecret $auth.userKey) }}{{ end }}
{{- if $auth.passwordKey }}{{ $secretEnv = append $secretEnv (list "AGENTBUS_NATS__PASSWORD" $auth.existingSecret $auth.passwordKey) }}{{ end }}
{{- if $auth.tokenKey }}{{ $secretEnv = append $secretEnv (list "AGENTBUS_NATS__TOKEN" $auth.existingSecret $auth.tokenKey) }}{{ end }}
{{- end }}
{{- if eq $svc "archiver" }}
{{- if $own.database.existingSecret }}
{{- $secretEnv = append $secretEnv (list "AGENTBUS_ARCHIVER__DATABASE_URL" $own.database.existingSecret $own.database.secretKey) }}
{{- else }}
{{- $_ := set $env "AGENTBUS_ARCHIVER__DATABASE_URL" (default "sqlite+aiosqlite:////var/lib/agentbus/archive.db" $own.database.url) }}
{{- end }}
{{- end }}
{{- if and (eq $svc "worker") $own.summarizer.openai.apiKeySecret.name }}
{{- $secretEnv = append $secretEnv (list "AGENTBUS_SUMMARIZER__OPENAI_API_KEY" $own.summarizer.openai.apiKeySecret.name $own.summarizer.openai.apiKeySecret.key) }}
{{- end }}
{{- range $s := $secretEnv }}
{{- $_ := unset $env (index $s 0) }}
{{- end }}
{{- range $name := keys $env | sortAlpha }}
- name: {{ $name }}
  value: {{ get $env $name | quote }}
{{- end }}
- name: AGENTBUS_AGENT_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- range $s := $secretEnv }}
- name: {{ index $s 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index $s 1 }}
      key: {{ index $s 2 }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with $own.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes ------------------------------------------------------------------------ */}}

{{- define "agentbus.volumeMounts" -}}
{{- $auth := include "agentbus.natsAuth" . | fromJson }}
- name: tmp
  mountPath: /tmp
{{- if and $auth.existingSecret $auth.credsKey }}
- name: nats-creds
  mountPath: /etc/agentbus/nats-creds
  readOnly: true
{{- end }}
{{- if .root.Values.natsTls.existingSecret }}
- name: nats-tls
  mountPath: /etc/agentbus/nats-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "agentbus.volumes" -}}
{{- $auth := include "agentbus.natsAuth" . | fromJson }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpSizeLimit }}
{{- if and $auth.existingSecret $auth.credsKey }}
- name: nats-creds
  secret:
    secretName: {{ $auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $auth.credsKey }}
        path: {{ $auth.credsKey }}
{{- end }}
{{- with .root.Values.natsTls }}
{{- if .existingSecret }}
- name: nats-tls
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{/* Pods --------------------------------------------------------------------------- */}}

{{/* The container securityContext and common pod fields. */}}
{{- define "agentbus.podCommon" -}}
{{- $v := .root.Values }}
serviceAccountName: {{ include "agentbus.serviceAccountName" .root }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A long-running service's pod template: dict "root" $ "service" "worker" "args" (list ...) */}}
{{- define "agentbus.servicePodTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $own := get $v .service }}
metadata:
  labels:
    {{- include "agentbus.componentLabels" . | nindent 4 }}
    {{- with $own.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or $v.metrics.scrapeAnnotations $own.podAnnotations }}
  annotations:
    {{- if $v.metrics.scrapeAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $v.http.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $own.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  {{- include "agentbus.podCommon" . | trim | nindent 2 }}
  terminationGracePeriodSeconds: {{ add ($v.gracePeriodSeconds | int) 10 }}
  {{- with $own.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  containers:
    - name: {{ include "agentbus.component" . }}
      image: {{ include "agentbus.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["agentbus"]
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        {{- include "agentbus.env" . | trim | nindent 8 }}
      ports:
        - name: http
          containerPort: {{ $v.http.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml $v.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml $v.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml $v.probes.readiness | nindent 8 }}
      resources:
        {{- toYaml $own.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        {{- include "agentbus.volumeMounts" . | trim | nindent 8 }}
        {{- if and (eq .service "archiver") (not $own.database.existingSecret) (not $own.database.url) }}
        - name: data
          mountPath: /var/lib/agentbus
        {{- end }}
  volumes:
    {{- include "agentbus.volumes" . | trim | nindent 4 }}
    {{- if and (eq .service "archiver") (not $own.database.existingSecret) (not $own.database.url) }}
    - name: data
      {{- if $own.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ default (include "agentbus.componentName" .) $own.persistence.existingClaim }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
  {{- with $own.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $own.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $own.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $own.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* True when SQLite on the chart's volume holds the archive. */}}
{{- define "agentbus.archiverSqlite" -}}
{{- $db := .Values.archiver.database }}
{{- if and (not $db.existingSecret) (or (not $db.url) (hasPrefix "sqlite" $db.url)) }}true{{ end }}
{{- end }}

{{- define "agentbus.validate" -}}
{{- if and .Values.worker.autoscaling.enabled .Values.worker.keda.enabled }}
{{- fail "worker.autoscaling.enabled and worker.keda.enabled are exclusive: KEDA makes its own HPA" }}
{{- end }}
{{- if and (include "agentbus.archiverSqlite" .) (gt (int .Values.archiver.replicas) 1) }}
{{- fail "archiver.replicas > 1 needs a shared database (archiver.database.url or existingSecret): SQLite lives on one volume" }}
{{- end }}
{{- if and .Values.nats.enabled (gt (int .Values.topology.replicas) 1) (not .Values.nats.config.cluster.enabled) }}
{{- fail "topology.replicas > 1 needs a NATS cluster (nats.config.cluster.enabled)" }}
{{- end }}
{{- if and .Values.nats.enabled .Values.nats.config.cluster.enabled (gt (int .Values.topology.replicas) (int .Values.nats.config.cluster.replicas)) }}
{{- fail "topology.replicas must not exceed nats.config.cluster.replicas" }}
{{- end }}
{{- if and .Values.metrics.podMonitor.enabled .Values.metrics.serviceMonitor.enabled }}
{{- fail "metrics.podMonitor.enabled and metrics.serviceMonitor.enabled: pick one (each service would be scraped twice)" }}
{{- end }}
{{- end }}
