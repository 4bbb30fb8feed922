{{/* The release's base name, 63 characters at most. */}}
{{- define "keyfleet-hub.fullname" -}}
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

{{- define "keyfleet-hub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels selecting the hub's pods. */}}
{{- define "keyfleet-hub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyfleet-hub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "keyfleet-hub.labels" -}}
{{ include "keyfleet-hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: hub
app.kubernetes.io/part-of: keyfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "keyfleet-hub.serviceAccountName" -}}
{{- default (include "keyfleet-hub.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The ConfigMap holding the specs, or "" when there is none. */}}
{{- define "keyfleet-hub.specsConfigMap" -}}
{{- if .Values.specs.existingConfigMap -}}
{{- .Values.specs.existingConfigMap -}}
{{- else if .Values.specs.files -}}
{{- printf "%s-specs" (include "keyfleet-hub.fullname" .) -}}
{{- end -}}
{{- end -}}
