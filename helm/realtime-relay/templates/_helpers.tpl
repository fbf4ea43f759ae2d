{{/*
Names, labels and the rendered relay.yaml. Every template includes "realtime-relay.validate"
through the Deployment, so a bad combination of values fails the render with a message naming
the values to change.
*/}}

{{- define "realtime-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "realtime-relay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "realtime-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "realtime-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "realtime-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "realtime-relay.labels" -}}
helm.sh/chart: {{ include "realtime-relay.chart" . }}
{{ include "realtime-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: realtime-relay
{{- end -}}

{{- define "realtime-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "realtime-relay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "realtime-relay.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "realtime-relay.policiesConfigMapName" -}}
{{- default (printf "%s-policies" (include "realtime-relay.fullname" .)) .Values.policies.existingConfigMap -}}
{{- end -}}

{{/* drain_seconds as the relay will see it (its built-in default is 30). */}}
{{- define "realtime-relay.drainSeconds" -}}
{{- if hasKey .Values.config "drain_seconds" -}}
{{- .Values.config.drain_seconds | float64 -}}
{{- else -}}
30
{{- end -}}
{{- end -}}

{{- define "realtime-relay.recordingEnabled" -}}
{{- $rec := .Values.config.recording | default dict -}}
{{- if hasKey $rec "enabled" -}}{{ $rec.enabled }}{{- else -}}true{{- end -}}
{{- end -}}

{{- define "realtime-relay.recordingSink" -}}
{{- $rec := .Values.config.recording | default dict -}}
{{- $rec.sink | default "local" -}}
{{- end -}}

{{/*
The relay.yaml the pods read: the user's config plus the keys the chart owns (listeners, paths
inside the pod, TLS files). Secrets are not here: they arrive as RELAY_* environment variables
from secretKeyRef.
*/}}
{{- define "realtime-relay.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.ports.http)) -}}
{{- $_ := set $cfg "admin_listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- $_ := set $cfg "policies_dir" "/etc/relay/policies" -}}
{{- if .Values.tls.existingSecret -}}
{{- $_ := set $cfg "tls_cert" "/etc/relay/tls/tls.crt" -}}
{{- $_ := set $cfg "tls_key" "/etc/relay/tls/tls.key" -}}
{{- end -}}
{{- $rec := deepCopy ($cfg.recording | default dict) -}}
{{- $_ := set $rec "local_dir" "/var/lib/relay/recordings" -}}
{{- $_ := set $rec "spool_dir" "/var/lib/relay/spool" -}}
{{- $_ := set $cfg "recording" $rec -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Refuse value combinations that would deploy a relay that cuts calls or cannot start. */}}
{{- define "realtime-relay.validate" -}}
{{- $drain := include "realtime-relay.drainSeconds" . | float64 -}}
{{- $preStop := .Values.lifecycle.preStopSleepSeconds | float64 -}}
{{- $grace := .Values.terminationGracePeriodSeconds | float64 -}}
{{- if le $grace (addf $drain $preStop) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than lifecycle.preStopSleepSeconds (%v) + config.drain_seconds (%v): otherwise Kubernetes kills pods before live sessions have drained" $grace $preStop $drain) -}}
{{- end -}}
{{- if and .Values.devSimulatedUpstream .Values.secrets.openai.existingSecret -}}
{{- fail "devSimulatedUpstream runs without an OpenAI key: set secrets.openai.existingSecret to \"\" as well (or turn devSimulatedUpstream off)" -}}
{{- end -}}
{{- if and (not .Values.devSimulatedUpstream) (not .Values.secrets.openai.existingSecret) -}}
{{- fail "secrets.openai.existingSecret is empty: name the Secret holding the OpenAI API key (or set devSimulatedUpstream=true for a development install)" -}}
{{- end -}}
{{- if eq (include "realtime-relay.recordingEnabled" .) "true" -}}
{{- $rec := .Values.config.recording | default dict -}}
{{- $spool := (hasKey $rec "spool_max_mb" | ternary $rec.spool_max_mb 4096) | float64 -}}
{{- if ge $spool (.Values.spool.sizeLimitMi | float64) -}}
{{- fail (printf "config.recording.spool_max_mb (%v) must be below spool.sizeLimitMi (%v): the kubelet evicts a pod (cutting every call) when its spool emptyDir outgrows the limit" $spool .Values.spool.sizeLimitMi) -}}
{{- end -}}
{{- if eq (include "realtime-relay.recordingSink" .) "s3" -}}
{{- if not (($rec.s3 | default dict).bucket) -}}
{{- fail "config.recording.s3.bucket is required when config.recording.sink is s3" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.policies.existingConfigMap (not .Values.policies.existingConfigMapItems) -}}
{{- fail "policies.existingConfigMapItems: list the keys of policies.existingConfigMap and their paths (ConfigMap keys cannot contain \"/\", so tenants/<tenant>.yaml needs an item)" -}}
{{- end -}}
{{- end -}}
