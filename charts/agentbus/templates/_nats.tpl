{{/* NATS wiring: the subchart's names, the client URL and port, the monitoring endpoint,
     the credentials of each service, and the chart's NATS users (files/ from
     agentbus.contract.permissions): user selection, passwords and the auth.conf of their Secret. */}}

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

{{/* The labels of the bundled NATS's pods (the NATS chart's selector labels). */}}
{{- define "agentbus.natsPodLabels" -}}
app.kubernetes.io/name: {{ default "nats" .Values.nats.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end }}

{{- define "agentbus.natsPort" -}}
{{- $port := 4222 }}
{{- with .Values.nats.config }}{{ with .nats }}{{ with .port }}{{ $port = . }}{{ end }}{{ end }}{{ end }}
{{- $port | int }}
{{- end }}

{{/* The TCP ports our pods reach NATS on, as a JSON list: networkPolicy.natsPorts when
     set, else the bundled NATS's client port (nats.config.nats.port), else the port of
     each externalNats.url (4222 when it names none). */}}
{{- define "agentbus.natsClientPorts" -}}
{{- $ports := list }}
{{- if .Values.networkPolicy.natsPorts }}
{{- $ports = .Values.networkPolicy.natsPorts }}
{{- else if .Values.nats.enabled }}
{{- $ports = list (include "agentbus.natsPort" . | int) }}
{{- else }}
{{- range splitList "," .Values.externalNats.url }}
{{- $port := (urlParse (trim .)).host | splitList ":" | rest | last | default "4222" }}
{{- $ports = append $ports ($port | int) }}
{{- end }}
{{- end }}
{{- $ports | uniq | toJson }}
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

{{/* files/nats-permissions.json (generated from agentbus.contract.permissions), as JSON text. */}}
{{- define "agentbus.natsPermissions" -}}
{{- $raw := .Files.Get "files/nats-permissions.json" }}
{{- if not $raw }}
{{- fail "files/nats-permissions.json is missing from the chart: run `agentbus permissions --write`" }}
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
{{- $roles := dict "orchestrator" "orchestrator" "worker" "worker" "archiver" "archiver" "gateway" "gateway" "provision" "provisioner" "test" "client" }}
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
{{- fail (printf "files/nats-permissions.json has no NATS user %q: run `agentbus permissions --write`" .user) }}
{{- end }}
{{- toJson $found }}
{{- end }}

{{/* The chart's files/nats-auth.conf after checking it against files/nats-permissions.json
     (both from one `agentbus permissions --write`): nats-server resolves a variable from
     earlier in the same file, and refuses one that nothing uses, so the users of the two
     files must match. The hook Job (agentbus nats-auth-secret) prepends the passwords. */}}
{{- define "agentbus.natsAuthFile" -}}
{{- $write := "run `agentbus permissions --write`" }}
{{- $users := (include "agentbus.natsPermissions" . | fromJson).users }}
{{- $conf := .Files.Get "files/nats-auth.conf" }}
{{- if not $conf }}
{{- fail (printf "files/nats-auth.conf is missing from the chart: %s" $write) }}
{{- end }}
{{- if ne (len (regexFindAll `(?m)^\s*password: \$` $conf -1)) (len $users) }}
{{- fail (printf "files/nats-auth.conf and files/nats-permissions.json do not have the same users: %s" $write) }}
{{- end }}
{{- range $u := $users }}
{{- $var := toString $u.password_variable }}
{{- if not (regexMatch `^[A-Z_][A-Z0-9_]*$` $var) }}
{{- fail (printf "files/nats-permissions.json: user %q has no password_variable: %s" $u.user $write) }}
{{- end }}
{{- if not (contains (printf "\n      password: $%s\n" $var) $conf) }}
{{- fail (printf "files/nats-auth.conf has no user with the password $%s of %q: %s" $var $u.user $write) }}
{{- end }}
{{- end }}
{{- $conf }}
{{- end }}
