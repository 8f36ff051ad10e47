{{/* Validation of value combinations, and of the NATS subchart values that load the
     chart's auth.conf. */}}

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
{{- if and .Values.nats.enabled (dig "promExporter" "podMonitor" "enabled" false .Values.nats) (or .Values.metrics.podMonitor.enabled .Values.metrics.serviceMonitor.enabled) }}
{{- fail "nats.promExporter.podMonitor.enabled: the chart's metrics.podMonitor/serviceMonitor already make a PodMonitor for the NATS exporter (turn one off: NATS would be scraped twice)" }}
{{- end }}
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
{{- fail (printf "worker.skill %q has no NATS permissions in files/nats-permissions.json (skills: %s): run `agentbus permissions --write --skill %s`" .Values.worker.skill (join ", " $skills) .Values.worker.skill) }}
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

{{/* "true" when the cluster serves a custom resource kind (.Capabilities.APIVersions,
     which `helm template --api-versions` sets offline), else nothing: the resource is not
     made (an API server would refuse the whole install with "no matches for kind") and
     NOTES.txt says so, naming the value that asked for it.
     dict "root" $ "api" "monitoring.coreos.com/v1/PodMonitor" */}}
{{- define "agentbus.hasApi" -}}
{{- if .root.Capabilities.APIVersions.Has .api }}true{{ end }}
{{- end }}

{{/* value -> API of every custom resource asked for that the cluster does not serve. */}}
{{- define "agentbus.missingApis" -}}
{{- $m := .Values.metrics }}
{{- $asked := list }}
{{- if $m.podMonitor.enabled }}{{ $asked = append $asked (list "metrics.podMonitor.enabled" "monitoring.coreos.com/v1/PodMonitor") }}{{ end }}
{{- if $m.serviceMonitor.enabled }}{{ $asked = append $asked (list "metrics.serviceMonitor.enabled" "monitoring.coreos.com/v1/ServiceMonitor") }}{{ end }}
{{- if and (or $m.podMonitor.enabled $m.serviceMonitor.enabled) .Values.nats.enabled .Values.nats.promExporter.enabled }}{{ $asked = append $asked (list "metrics.*Monitor.enabled (the NATS exporter's PodMonitor)" "monitoring.coreos.com/v1/PodMonitor") }}{{ end }}
{{- if .Values.prometheusRule.enabled }}{{ $asked = append $asked (list "prometheusRule.enabled" "monitoring.coreos.com/v1/PrometheusRule") }}{{ end }}
{{- if .Values.worker.keda.enabled }}{{ $asked = append $asked (list "worker.keda.enabled" "keda.sh/v1alpha1/ScaledObject") }}{{ end }}
{{- $out := dict }}
{{- range $asked }}
{{- if not (include "agentbus.hasApi" (dict "root" $ "api" (index . 1))) }}{{ $_ := set $out (index . 0) (index . 1) }}{{ end }}
{{- end }}
{{- toJson $out }}
{{- end }}
