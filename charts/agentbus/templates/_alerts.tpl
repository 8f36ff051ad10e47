{{/* The alert rules of the release (`groups:`), for the PrometheusRule. `sel` matches
     this release's series: the namespace and app_kubernetes_io_instance labels that the
     chart's monitors add (prometheusRule.selector to match other scrape configs). */}}
{{- define "agentbus.alertGroups" -}}
{{- $r := .Values.prometheusRule }}
{{- $a := $r.alerts }}
{{- $sel := tpl $r.selector . }}
{{- $by := "namespace, app_kubernetes_io_instance" }}
{{- $queues := "JOBS|TASKS|RESULTS|AGENT_EVENTS" }}
groups:
  - name: agentbus
    rules:
      {{- with $a.deadLetters }}
      {{- if .enabled }}
      - alert: AgentbusDeadLettersGrowing
        expr: sum by ({{ $by }}, stream) (increase(agentbus_dead_letters_total{ {{- $sel -}} }[{{ .window }}])) > 0
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: Messages are being dead-lettered from {{ "{{ $labels.stream }}" }}
          description: >-
            {{ "{{ $value | humanize }}" }} messages of stream {{ "{{ $labels.stream }}" }} went to
            the DLQ in the last {{ .window }} (release {{ "{{ $labels.app_kubernetes_io_instance }}" }}).
            Inspect and replay them with `agentbus dlq list` / `agentbus dlq replay`.
      {{- end }}
      {{- end }}
      {{- with $a.consumerLag }}
      {{- if .enabled }}
      - alert: AgentbusConsumerLagHigh
        expr: sum by ({{ $by }}, stream_name, consumer_name) (nats_consumer_num_pending{ {{- $sel -}}, stream_name=~"{{ $queues }}", is_consumer_leader="true"}) > {{ .threshold }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: Consumer {{ "{{ $labels.consumer_name }}" }} is more than {{ .threshold }} messages behind
          description: >-
            {{ "{{ $value | humanize }}" }} messages of {{ "{{ $labels.stream_name }}" }} wait for
            consumer {{ "{{ $labels.consumer_name }}" }} for {{ .for }} (NATS exporter). Add
            workers (worker.replicas, worker.keda) or look for stuck ones.
      {{- end }}
      {{- end }}
      {{- with $a.noWorker }}
      {{- if .enabled }}
      - alert: AgentbusNoWorkerReady
        expr: (sum by ({{ $by }}, service) (agentbus_nats_connected{ {{- $sel -}}, service="worker"}) < 1) or absent(agentbus_nats_connected{ {{- $sel -}}, service="worker"})
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: No summarize worker is connected to NATS
          description: >-
            No worker process of the release has been connected to NATS for {{ .for }}: tasks
            wait in the TASKS stream. Check the worker pods (kubectl get pods,
            logs, readiness).
      {{- end }}
      {{- end }}
      {{- with $a.jobsFailing }}
      {{- if .enabled }}
      - alert: AgentbusJobsFailing
        expr: |-
          sum by ({{ $by }}) (increase(agentbus_jobs_failed_total{ {{- $sel -}} }[{{ .window }}]))
            / (sum by ({{ $by }}) (increase(agentbus_jobs_failed_total{ {{- $sel -}} }[{{ .window }}]))
              + sum by ({{ $by }}) (increase(agentbus_jobs_completed_total{ {{- $sel -}} }[{{ .window }}])))
            > {{ .ratio }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: More than {{ mulf .ratio 100 }}% of jobs fail
          description: >-
            {{ "{{ $value | humanizePercentage }}" }} of the jobs that finished in the last
            {{ .window }} failed. `agentbus history <job>` and the Errors panel give the reason.
      {{- end }}
      {{- end }}
      {{- with $a.pastDeadline }}
      {{- if .enabled }}
      - alert: AgentbusJobsPastDeadline
        expr: sum by ({{ $by }}) (increase(agentbus_jobs_failed_total{ {{- $sel -}}, reason="timeout"}[{{ .window }}])) > 0
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: Jobs outlived their deadline
          description: >-
            {{ "{{ $value | humanize }}" }} jobs were failed by the orchestrator in the last
            {{ .window }} because they were older than their deadline (orchestrator.job_timeout_s
            or the job's own timeout): workers are too few or too slow.
      {{- end }}
      {{- end }}
      {{- with $a.archiveLag }}
      {{- if .enabled }}
      - alert: AgentbusArchiveLagHigh
        expr: histogram_quantile(0.95, sum by ({{ $by }}, le) (rate(agentbus_archive_lag_seconds_bucket{ {{- $sel -}} }[5m]))) > {{ .seconds }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: The event archive is more than {{ .seconds }} s behind
          description: >-
            95% of events reach the archive within {{ "{{ $value | humanizeDuration }}" }} of
            being emitted ({{ .for }} above {{ .seconds }} s): `agentbus history` answers late.
            Check the event-archiver and its database.
      {{- end }}
      {{- end }}
      {{- with $a.permissionViolations }}
      {{- if .enabled }}
      - alert: AgentbusNatsPermissionViolations
        expr: sum by ({{ $by }}, service) (increase(agentbus_nats_permission_violations_total{ {{- $sel -}} }[{{ .window }}])) > 0
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: NATS refused operations of the {{ "{{ $labels.service }}" }} user
          description: >-
            The NATS server refused {{ "{{ $value | humanize }}" }} operations of service
            {{ "{{ $labels.service }}" }} in the last {{ .window }}: its permissions
            (files/nats-permissions.json) and its code disagree, or something misuses its user.
      {{- end }}
      {{- end }}
      {{- with $a.tenantBudget }}
      {{- if .enabled }}
      - alert: AgentbusTenantTokenBudgetNearlySpent
        expr: |-
          max by ({{ $by }}, tenant) (agentbus_tenant_tokens_window{ {{- $sel -}} })
            / on ({{ $by }}, tenant) max by ({{ $by }}, tenant) (agentbus_tenant_token_budget{ {{- $sel -}} })
            > {{ .ratio }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: Tenant {{ "{{ $labels.tenant }}" }} has used {{ "{{ $value | humanizePercentage }}" }} of its token budget
          description: >-
            When the budget is spent the tenant's new jobs wait for the window to turn, or
            fail with the reason (its over_budget setting). `agentbus tenants` shows the use,
            the budget and when the window turns.
      {{- end }}
      {{- end }}
      {{- with $a.tenantBudgetSpent }}
      {{- if .enabled }}
      - alert: AgentbusTenantTokenBudgetSpent
        expr: |-
          max by ({{ $by }}, tenant) (agentbus_tenant_tokens_window{ {{- $sel -}} })
            / on ({{ $by }}, tenant) max by ({{ $by }}, tenant) (agentbus_tenant_token_budget{ {{- $sel -}} })
            >= 1
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
        annotations:
          summary: Tenant {{ "{{ $labels.tenant }}" }} has spent its token budget
          description: >-
            Its new jobs wait or fail until the budget window turns (`agentbus tenants`).
      {{- end }}
      {{- end }}
{{- end }}
