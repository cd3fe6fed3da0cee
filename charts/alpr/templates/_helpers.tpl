{{/*
Expand the name of the chart.
*/}}
{{- define "alpr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Create a default fully qualified app name, truncated at 63 characters (the DNS label limit).
A release name that already contains the chart name is used as is.
*/}}
{{- define "alpr.fullname" -}}
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

{{/*
Chart name and version, as used by the chart label.
*/}}
{{- define "alpr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Common labels. Pass a dict with "context" (the root) and optionally "component".
*/}}
{{- define "alpr.labels" -}}
helm.sh/chart: {{ include "alpr.chart" .context }}
{{ include "alpr.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: alpr
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels. Pass a dict with "context" (the root) and optionally "component".
*/}}
{{- define "alpr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alpr.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
The step image, "repository:tag"; the tag defaults to the chart's appVersion.
*/}}
{{- define "alpr.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "alpr.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "alpr.imageTag" .) -}}
{{- end -}}

{{/*
An image that falls back to the step image: pass a dict with "context" and "image" ({repository, tag}).
*/}}
{{- define "alpr.imageOrStep" -}}
{{- $root := .context -}}
{{- printf "%s:%s" (default $root.Values.image.repository .image.repository) (default (include "alpr.imageTag" $root) .image.tag) -}}
{{- end -}}

{{/*
The Secret with gcs-key.json and db-url: the user's or the chart's.
*/}}
{{- define "alpr.secretName" -}}
{{- default (printf "%s-secrets" (include "alpr.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
The work volume's PVC: the user's or the chart's.
*/}}
{{- define "alpr.workClaimName" -}}
{{- default (printf "%s-work" (include "alpr.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/*
The ServiceAccount of the workflow pods.
*/}}
{{- define "alpr.workflowServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-workflow" (include "alpr.fullname" .)) .Values.serviceAccount.name -}}
{{- else if and .Values.rbac.create (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.name is required with serviceAccount.create=false and rbac.create=true: the Role would go to the namespace's default ServiceAccount, which every pod there uses" -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The InferenceService; the pipeline's deploy step patches it by this name.
*/}}
{{- define "alpr.inferenceServiceName" -}}
{{- default (include "alpr.fullname" .) .Values.kserve.name -}}
{{- end -}}

{{/*
TensorBoard's Deployment and Service: a Service's name is a DNS label, 63 characters at most.
*/}}
{{- define "alpr.tensorboard.fullname" -}}
{{- printf "%s-tensorboard" (include "alpr.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
MySQL: its Service (host) and the Secret holding mysql-root-password.
*/}}
{{- define "alpr.mysql.fullname" -}}
{{- printf "%s-mysql" (include "alpr.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "alpr.mysql.secretName" -}}
{{- default (include "alpr.mysql.fullname" .) .Values.mysql.auth.existingSecret -}}
{{- end -}}

{{/*
The db-url the chart's Secret carries: secrets.dbUrl, else the chart's MySQL, else none (SQLite on the volume).
The password is percent-encoded for the URL; urlquery writes a space as "+" (a real "+" as %2B), which
SQLAlchemy would read as "+", so those become %20.
*/}}
{{- define "alpr.dbUrl" -}}
{{- if .Values.secrets.dbUrl -}}
{{- .Values.secrets.dbUrl -}}
{{- else if .Values.mysql.enabled -}}
{{- if .Values.mysql.auth.existingSecret -}}
{{- fail "mysql.auth.existingSecret is set: the chart cannot read that password, so give the database URL in secrets.dbUrl (or use secrets.existingSecret)" -}}
{{- end -}}
{{- $password := required "mysql.auth.rootPassword is required when mysql.enabled=true (or set mysql.auth.existingSecret)" .Values.mysql.auth.rootPassword -}}
{{- printf "mysql+pymysql://root:%s@%s:3306/%s" (urlquery $password | replace "+" "%20") (include "alpr.mysql.fullname" .) .Values.mysql.database -}}
{{- end -}}
{{- end -}}
