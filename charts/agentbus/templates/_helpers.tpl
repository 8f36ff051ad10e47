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

{{/* NATS users (natsAuth.enabled) --------------------------------------------------- */}}

{{/* files/nats-permissions.json (generated from agentbus.permissions), as JSON text. */}}
{{- define "agentbus.natsPermissions" -}}
{{- $raw := .Files.Get "files/nats-permissions.json" }}
{{- if not $raw }}
{{- fail "files/nats-permissions.json is missing from the chart: run `python -m agentbus.permissions --write`" }}
{{- end }}
{{- $raw }}
{{- end }}

{{/* The Secret with auth.conf and the passwords; the NATS chart names it the same way in
     nats.podTemplate.patch ({{ include "nats.fullname" . }}-auth). */}}
{{- define "agentbus.natsAuthSecretName" -}}
{{- printf "%s-auth" (include "agentbus.natsFullname" .) }}
{{- end }}

{{/* The chart's NATS user of one pod (dict "root" $ "service" "worker"), or nothing when
     natsAuth.enabled is false or the service has credentials of its own (existingSecret). */}}
{{- define "agentbus.natsUser" -}}
{{- $auth := include "agentbus.natsAuth" . | fromJson }}
{{- if and .root.Values.natsAuth.enabled (not $auth.existingSecret) }}
{{- $roles := dict "orchestrator" "orchestrator" "worker" "worker" "archiver" "archiver" "provision" "provisioner" "test" "client" }}
{{- $user := get $roles .service }}
{{- if not $user }}
{{- fail (printf "no NATS user for the agentbus service %q" .service) }}
{{- end }}
{{- $user }}
{{- end }}
{{- end }}

{{/* The entry of one user in files/nats-permissions.json: dict "root" $ "user" "worker". */}}
{{- define "agentbus.natsUserEntry" -}}
{{- $found := dict }}
{{- range $u := (include "agentbus.natsPermissions" .root | fromJson).users }}
{{- if eq $u.user $.user }}{{ $found = $u }}{{ end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "files/nats-permissions.json has no NATS user %q: run `python -m agentbus.permissions --write`" .user) }}
{{- end }}
{{- toJson $found }}
{{- end }}

{{/* The data of an existing Secret (base64 values) or {}: dict "namespace" ns "name" n.
     Offline (helm template, lint) lookup finds nothing. */}}
{{- define "agentbus.secretData" -}}
{{- $secret := lookup "v1" "Secret" .namespace .name | default dict }}
{{- toJson (get $secret "data" | default dict) }}
{{- end }}

{{/* user -> password of every user: from natsAuth.passwordsSecret, else those of the
     release's Secret (kept across upgrades), else new random ones. Called once per render. */}}
{{- define "agentbus.natsPasswords" -}}
{{- $users := (include "agentbus.natsPermissions" . | fromJson).users }}
{{- $existing := .Values.natsAuth.passwordsSecret }}
{{- $name := default (include "agentbus.natsAuthSecretName" .) $existing }}
{{- $data := include "agentbus.secretData" (dict "namespace" .Release.Namespace "name" $name) | fromJson }}
{{- if and $existing (not $data) }}
{{- fail (printf "natsAuth.passwordsSecret: no Secret %q in namespace %s (create it before installing; `helm template` cannot read Secrets)" $existing .Release.Namespace) }}
{{- end }}
{{- $out := dict }}
{{- range $u := $users }}
{{- $old := get $data $u.user | default "" | b64dec | trim }}
{{- if and $existing (not $old) }}
{{- fail (printf "natsAuth.passwordsSecret %s has no (non-empty) key %q: it needs one key per NATS user" $existing $u.user) }}
{{- end }}
{{- $_ := set $out $u.user (ternary $old (randAlphaNum 32) (ne $old "")) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* A quoted nats-server configuration string: dict "value" v "what" "the password of x". */}}
{{- define "agentbus.confString" -}}
{{- if not (regexMatch `^[^"\\[:cntrl:]]*$` .value) }}
{{- fail (printf "%s holds a quote, backslash or control character" .what) }}
{{- end }}
{{- printf "\"%s\"" .value }}
{{- end }}

{{/* A nats-server `authorization { users = [...] }` block from the permissions JSON and the
     passwords: dict "permissions" (json) "passwords" (dict). The same text as
     agentbus.permissions.render_nats_conf, which the chart tests compare it with. */}}
{{- define "agentbus.natsAuthConf" -}}
{{- $lines := list "authorization {" "  users = [" }}
{{- range $u := .permissions.users }}
{{- $pw := get $.passwords $u.user }}
{{- $lines = append $lines "    {" }}
{{- $lines = append $lines (printf "      user: %s" (include "agentbus.confString" (dict "value" $u.user "what" "a user name"))) }}
{{- $lines = append $lines (printf "      password: %s" (include "agentbus.confString" (dict "value" $pw "what" (printf "the password of %s" $u.user)))) }}
{{- $lines = append $lines "      permissions: {" }}
{{- range $dir := list "publish" "subscribe" }}
{{- $items := list }}
{{- range $subject := (get $u.permissions $dir).allow }}
{{- $items = append $items (printf "          %s" (include "agentbus.confString" (dict "value" $subject "what" "a subject"))) }}
{{- end }}
{{- $lines = append $lines (printf "        %s: { allow: [" $dir) }}
{{- $lines = append $lines (join "\n" $items) }}
{{- $lines = append $lines "        ] }" }}
{{- end }}
{{- if $u.permissions.allow_responses }}
{{- $lines = append $lines "        allow_responses: true" }}
{{- end }}
{{- $lines = concat $lines (list "      }" "    }") }}
{{- end }}
{{- $lines = concat $lines (list "  ]" "}") }}
{{- printf "%s\n" (join "\n" $lines) }}
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
{{- $natsUser := include "agentbus.natsUser" . }}
{{- if $natsUser }}
{{- /* the chart's user: its env entries from files/nats-permissions.json, password file */}}
{{- $entry := include "agentbus.natsUserEntry" (dict "root" $root "user" $natsUser) | fromJson }}
{{- if and $auth.inboxPrefix (ne $auth.inboxPrefix $entry.inbox_prefix) }}
{{- fail (printf "natsAuth inboxPrefix %q of %s: the chart's NATS user %s may only use %s (inboxPrefix is for credentials of your own, with existingSecret)" $auth.inboxPrefix $svc $natsUser $entry.inbox_prefix) }}
{{- end }}
{{- range $name, $val := $entry.env }}
{{- $_ := set $env $name (toString $val) }}
{{- end }}
{{- $_ := set $env "AGENTBUS_NATS__PASSWORD_FILE" "/etc/agentbus/nats-auth/password" }}
{{- else }}
{{- with $auth.inboxPrefix }}
{{- $_ := set $env "AGENTBUS_NATS__INBOX_PREFIX" (toString .) }}
{{- end }}
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
{{- if include "agentbus.natsUser" . }}
- name: nats-auth
  mountPath: /etc/agentbus/nats-auth
  readOnly: true
{{- end }}
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
{{- with include "agentbus.natsUser" . }}
- name: nats-auth
  secret:
    secretName: {{ include "agentbus.natsAuthSecretName" $.root }}
    defaultMode: 0440
    items:
      - key: {{ . }}
        path: password
{{- end }}
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
{{- include "agentbus.validateNatsAuth" . }}
{{- if and .Values.metrics.podMonitor.enabled .Values.metrics.serviceMonitor.enabled }}
{{- fail "metrics.podMonitor.enabled and metrics.serviceMonitor.enabled: pick one (each service would be scraped twice)" }}
{{- end }}
{{- end }}

{{/* The chart's NATS users need: the worker's skill in the permissions file, and (bundled
     NATS) the subchart values that load auth.conf from the Secret. */}}
{{- define "agentbus.validateNatsAuth" -}}
{{- if .Values.natsAuth.enabled }}
{{- if include "agentbus.natsUser" (dict "root" $ "service" "worker") }}
{{- $skills := (include "agentbus.natsPermissions" . | fromJson).skills }}
{{- if not (has .Values.worker.skill $skills) }}
{{- fail (printf "worker.skill %q has no NATS permissions in files/nats-permissions.json (skills: %s): run `python -m agentbus.permissions --write --skill %s`" .Values.worker.skill (join ", " $skills) .Values.worker.skill) }}
{{- end }}
{{- end }}
{{- if .Values.nats.enabled }}
{{- $n := .Values.nats }}
{{- $mountPath := "" }}
{{- range $p := ($n.container | default dict).patch | default list }}
{{- if and (eq (toString $p.op) "add") (eq (toString $p.path) "/volumeMounts/-") (kindIs "map" $p.value) }}
{{- if eq (toString $p.value.name) "agentbus-nats-auth" }}{{ $mountPath = toString $p.value.mountPath }}{{ end }}
{{- end }}
{{- end }}
{{- $volume := false }}
{{- range $p := ($n.podTemplate | default dict).patch | default list }}
{{- if and (eq (toString $p.op) "add") (eq (toString $p.path) "/spec/volumes/-") (kindIs "map" $p.value) }}
{{- if and (eq (toString $p.value.name) "agentbus-nats-auth") $p.value.secret }}{{ $volume = true }}{{ end }}
{{- end }}
{{- end }}
{{- $included := false }}
{{- range $key, $file := ($n.config | default dict).merge | default dict }}
{{- if and $mountPath (hasSuffix "$include" $key) (eq (clean (printf "/etc/nats-config/%s" (toString $file))) (printf "%s/auth.conf" (trimSuffix "/" $mountPath))) }}
{{- $included = true }}
{{- end }}
{{- end }}
{{- if not (and $mountPath $volume $included) }}
{{- fail (printf "natsAuth.enabled with the bundled NATS needs the chart's entries in nats.config.merge ($include), nats.container.patch and nats.podTemplate.patch (volume agentbus-nats-auth from Secret %s): keep them when you set these values (see values.yaml)" (include "agentbus.natsAuthSecretName" .)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
