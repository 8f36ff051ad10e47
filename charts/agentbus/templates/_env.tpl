{{/* The env of the agentbus containers: typed values, free-form settings, the chart's
     wiring (NATS URL, user, credentials, TLS, database) and extra env. */}}

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
{{- if eq $svc "gateway" }}
{{- $_ := set $env "AGENTBUS_GATEWAY__PORT" (include "agentbus.envValue" $own.port) }}
{{- with $own.corsOrigins }}
{{- $_ := set $env "AGENTBUS_GATEWAY__CORS_ORIGINS" (include "agentbus.envValue" .) }}
{{- end }}
{{- with $own.publicUrl }}
{{- $_ := set $env "AGENTBUS_GATEWAY__PUBLIC_URL" (toString .) }}
{{- end }}
{{- end }}
{{- /* free-form settings: global, then the service's own */}}
{{- include "agentbus.addSettings" (dict "env" $env "settings" ($v.settings | default dict)) }}
{{- include "agentbus.addSettings" (dict "env" $env "settings" ($own.settings | default dict)) }}
{{- /* the chart's own wiring always wins */}}
{{- $_ := set $env "AGENTBUS_NATS__URL" (include "agentbus.natsUrl" $root) }}
{{- if and (eq $svc "gateway") $own.apiKeys.existingSecret }}
{{- $_ := set $env "AGENTBUS_GATEWAY__API_KEYS_FILE" (printf "/etc/agentbus/gateway-keys/%s" $own.apiKeys.secretKey) }}
{{- end }}
{{- if has $svc (list "orchestrator" "worker" "archiver" "gateway") }}
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
