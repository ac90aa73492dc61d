{{/* The operator image, pinned by digest when one is given. */}}
{{- define "stagecoach.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else if .Values.image.tag -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- else -}}
{{ fail "set image.digest (recommended) or image.tag" }}
{{- end -}}
{{- end -}}

{{- define "stagecoach.labels" -}}
app.kubernetes.io/name: stagecoach
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "stagecoach.selector" -}}
app.kubernetes.io/name: stagecoach
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}
