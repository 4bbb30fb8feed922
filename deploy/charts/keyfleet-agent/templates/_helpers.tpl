{{/* The release's base name, 63 characters at most. */}}
{{- define "keyfleet-agent.fullname" -}}
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

{{- define "keyfleet-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyfleet-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyfleet-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keyfleet-agent.labels" -}}
{{ include "keyfleet-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: keyfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The Secret holding the enrollment token. */}}
{{- define "keyfleet-agent.enrollmentSecret" -}}
{{- if .Values.enrollment.token -}}
{{- printf "%s-enrollment" (include "keyfleet-agent.fullname" .) -}}
{{- else -}}
{{- .Values.enrollment.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Checks the RBAC scope; returns nothing. */}}
{{- define "keyfleet-agent.checkRbac" -}}
{{- if eq .Values.rbac.scope "cluster" -}}
{{- if .Values.rbac.namespaces -}}
{{- fail "rbac.namespaces is set but rbac.scope is cluster: set rbac.scope=namespaces to limit the agent" -}}
{{- end -}}
{{- else if eq .Values.rbac.scope "namespaces" -}}
{{- if not .Values.rbac.namespaces -}}
{{- fail "rbac.scope=namespaces needs rbac.namespaces (the namespaces the agent may write Secrets in)" -}}
{{- end -}}
{{- else -}}
{{- fail (printf "rbac.scope must be cluster or namespaces, not %q" .Values.rbac.scope) -}}
{{- end -}}
{{- end -}}
