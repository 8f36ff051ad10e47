{{/* Pods: volumes and mounts, common pod fields (security context, service account) and
     the pod template of a long-running service. */}}

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
{{- include "agentbus.imagePullSecrets" .root }}
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
        {{- if eq .service "gateway" }}
        - name: api
          containerPort: {{ $own.port }}
          protocol: TCP
        {{- end }}
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
        {{- if and (eq .service "gateway") $own.apiKeys.existingSecret }}
        - name: gateway-keys
          mountPath: /etc/agentbus/gateway-keys
          readOnly: true
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
    {{- if and (eq .service "gateway") $own.apiKeys.existingSecret }}
    - name: gateway-keys
      secret:
        secretName: {{ $own.apiKeys.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ $own.apiKeys.secretKey }}
            path: {{ $own.apiKeys.secretKey }}
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
    {{- /* a constraint without labelSelector spreads this service's own pods */}}
    {{- range . }}
    {{- $c := deepCopy . }}
    {{- if not (hasKey $c "labelSelector") }}
    {{- $_ := set $c "labelSelector" (dict "matchLabels" (include "agentbus.selectorLabels" $ | fromYaml)) }}
    {{- end }}
    - {{- toYaml $c | nindent 6 }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* True when SQLite on the chart's volume holds the archive. */}}
{{- define "agentbus.archiverSqlite" -}}
{{- $db := .Values.archiver.database }}
{{- if and (not $db.existingSecret) (or (not $db.url) (hasPrefix "sqlite" $db.url)) }}true{{ end }}
{{- end }}

{{/* The provisioning Job's spec (hashed into its name): dict "root" $ "service" "provision". */}}
{{- define "agentbus.provisionJobSpec" -}}
{{- $v := .root.Values }}
backoffLimit: {{ $v.provision.backoffLimit }}
activeDeadlineSeconds: {{ $v.provision.activeDeadlineSeconds }}
template:
  metadata:
    labels:
      {{- include "agentbus.componentLabels" . | nindent 6 }}
  spec:
    {{- include "agentbus.podCommon" . | trim | nindent 4 }}
    restartPolicy: OnFailure
    containers:
      - name: provision
        image: {{ include "agentbus.image" .root }}
        imagePullPolicy: {{ $v.image.pullPolicy }}
        command: ["agentbus"]
        args: ["provision"]
        env:
          {{- include "agentbus.env" . | trim | nindent 10 }}
        resources:
          {{- toYaml $v.provision.resources | nindent 10 }}
        securityContext:
          {{- toYaml $v.securityContext | nindent 10 }}
        volumeMounts:
          {{- include "agentbus.volumeMounts" . | trim | nindent 10 }}
    volumes:
      {{- include "agentbus.volumes" . | trim | nindent 6 }}
{{- end }}
