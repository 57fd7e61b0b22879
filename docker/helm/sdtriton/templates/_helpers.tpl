{{/* Names, labels and the numbers several templates share. */}}

{{- define "sdtriton.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sdtriton.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "sdtriton.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "sdtriton.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "sdtriton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sdtriton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sdtriton.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sdtriton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sdtriton.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sdtriton.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The drain budget: sdtriton serve's --drain-timeout-s (it sets tritonserver's --exit-timeout-secs too). */}}
{{- define "sdtriton.drainSeconds" -}}
{{- .Values.drain.slowestRequestSeconds | int }}
{{- end }}

{{/* Kubernetes' grace period counts from the start of the stop, so it holds the preStop sleep as well. */}}
{{- define "sdtriton.terminationGraceSeconds" -}}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.slowestRequestSeconds .Values.drain.marginSeconds | int }}
{{- end }}

{{/* Startup probe failures allowed: the budget in whole periods, rounded up. */}}
{{- define "sdtriton.startupFailureThreshold" -}}
{{- $period := .Values.probes.startupPeriodSeconds | int }}
{{- div (add .Values.server.startupBudgetSeconds (sub $period 1)) $period | int }}
{{- end }}

{{/*
In-flight requests per pod: the engine's running + waiting gauges, or, for a pod that reports none of them, Triton's
own queue of the entry model. Used by the adapter rule (with its <<.LabelMatchers>>) and the KEDA query.
*/}}
{{- define "sdtriton.inFlightByPod" -}}
{{- $m := .matchers -}}
sum by ({{ .groupBy }}) (sdtriton_requests_running{ {{- $m -}} } + sdtriton_requests_waiting{ {{- $m -}} }) or sum by ({{ .groupBy }}) (nv_inference_pending_request_count{ {{- $m -}} ,model="{{ .entryModel }}"})
{{- end }}

{{/* The HPA behaviour, shared by our HPA and the one KEDA makes. */}}
{{- define "sdtriton.hpaBehavior" -}}
scaleUp:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleUp.stabilizationWindowSeconds | int }}
  selectPolicy: Max
  policies:
    - type: Percent
      value: {{ .Values.autoscaling.scaleUp.percent | int }}
      periodSeconds: {{ .Values.autoscaling.scaleUp.periodSeconds | int }}
    - type: Pods
      value: {{ .Values.autoscaling.scaleUp.pods | int }}
      periodSeconds: {{ .Values.autoscaling.scaleUp.periodSeconds | int }}
scaleDown:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleDown.stabilizationWindowSeconds | int }}
  selectPolicy: Min
  policies:
    - type: Pods
      value: {{ .Values.autoscaling.scaleDown.pods | int }}
      periodSeconds: {{ .Values.autoscaling.scaleDown.periodSeconds | int }}
{{- end }}

{{/* Checks values.schema.json cannot express (one value against another). */}}
{{- define "sdtriton.check" -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}

{{/* Object-store repositories, which tritonserver reads itself: s3 and gcs. */}}
{{- define "sdtriton.remoteRepository" -}}
{{- if has .Values.modelRepository.source (list "s3" "gcs") }}true{{ end }}
{{- end }}

{{/* The container's environment: where the deploy folder is, or the object store's credentials. */}}
{{- define "sdtriton.env" -}}
{{- $repo := .Values.modelRepository }}
{{- if not (include "sdtriton.remoteRepository" .) }}
- name: SDTRITON_DEPLOY_DIR
  value: /deploy
{{- end }}
{{- if eq $repo.source "s3" }}
{{- with $repo.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- if $repo.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $repo.s3.existingSecret }}
      key: {{ $repo.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $repo.s3.existingSecret }}
      key: {{ $repo.s3.secretAccessKeyKey }}
{{- with $repo.s3.sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $repo.s3.existingSecret }}
      key: {{ . }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq $repo.source "gcs") $repo.gcs.existingSecret }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: /var/run/secrets/sdtriton/gcs/{{ $repo.gcs.credentialsKey }}
{{- end }}
{{- with .Values.server.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The gateway (`sdtriton gateway`): its own name and labels, so that no selector of Triton's finds its pods. */}}
{{- define "sdtriton.gateway.fullname" -}}
{{- printf "%s-gateway" (include "sdtriton.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "sdtriton.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sdtriton.name" . | trunc 55 | trimSuffix "-" }}-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sdtriton.gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sdtriton.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: {{ include "sdtriton.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Where the gateway keeps images answered as URLs (--data-dir) and, without Redis, its SQLite job store. */}}
{{- define "sdtriton.gateway.dataDir" -}}
/var/lib/sdtriton-gateway
{{- end }}

{{/* The API keys file, projected from the Secret under a fixed name whatever the Secret's key. */}}
{{- define "sdtriton.gateway.apiKeysDir" -}}
/var/run/secrets/sdtriton/gateway-api-keys
{{- end }}

{{- define "sdtriton.gateway.apiKeysSecret" -}}
{{- .Values.gateway.apiKeys.existingSecret | default (printf "%s-api-keys" (include "sdtriton.gateway.fullname" .)) }}
{{- end }}

{{- define "sdtriton.gateway.webhookSecret" -}}
{{- .Values.gateway.webhook.existingSecret | default (printf "%s-webhook" (include "sdtriton.gateway.fullname" .)) }}
{{- end }}

{{/* Several gateways share jobs only through Redis: each SQLite store is its own pod's. */}}
{{- define "sdtriton.gateway.redis" -}}
{{- if or .Values.gateway.redis.url .Values.gateway.redis.existingSecret }}true{{ end }}
{{- end }}

{{- define "sdtriton.gateway.tritonUrl" -}}
{{- .Values.gateway.tritonUrl | default (printf "grpc://%s:8001" (include "sdtriton.fullname" .)) }}
{{- end }}

{{/* Checks values.schema.json cannot express, for the gateway. */}}
{{- define "sdtriton.gateway.check" -}}
{{- $gateway := .Values.gateway }}
{{- if not (or $gateway.apiKeys.existingSecret $gateway.apiKeys.keys) }}
{{- fail "gateway.apiKeys.existingSecret or gateway.apiKeys.keys is required: the gateway refuses to listen beyond loopback without API keys (or set gateway.enabled: false)" }}
{{- end }}
{{- if and $gateway.apiKeys.existingSecret $gateway.apiKeys.keys }}
{{- fail "give gateway.apiKeys.existingSecret or gateway.apiKeys.keys, not both" }}
{{- end }}
{{- if and $gateway.webhook.existingSecret $gateway.webhook.secret }}
{{- fail "give gateway.webhook.existingSecret or gateway.webhook.secret, not both" }}
{{- end }}
{{- if and $gateway.redis.url $gateway.redis.existingSecret }}
{{- fail "give gateway.redis.url or gateway.redis.existingSecret, not both" }}
{{- end }}
{{- if and (not (include "sdtriton.gateway.redis" .)) (or $gateway.autoscaling.enabled (gt (int $gateway.replicas) 1)) }}
{{- fail "gateway.redis.url or gateway.redis.existingSecret is required for more than one gateway replica (gateway.replicas > 1 or gateway.autoscaling.enabled): without Redis each pod keeps its jobs in its own SQLite file" }}
{{- end }}
{{- if gt (int $gateway.autoscaling.minReplicas) (int $gateway.autoscaling.maxReplicas) }}
{{- fail (printf "gateway.autoscaling.minReplicas (%d) must not exceed gateway.autoscaling.maxReplicas (%d)" (int $gateway.autoscaling.minReplicas) (int $gateway.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
