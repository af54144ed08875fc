{{/* The chart's name, at most 63 characters. */}}
{{- define "zeroscaler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name: the release name alone when it already contains the
chart's name (so "helm install zeroscaler" names everything "zeroscaler", as
deploy/ does), else RELEASE-zeroscaler.
*/}}
{{- define "zeroscaler.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "zeroscaler.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "zeroscaler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "zeroscaler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "zeroscaler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zeroscaler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "zeroscaler.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "zeroscaler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "zeroscaler.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
The rights zeroscaler needs on the workloads it watches, the same rules as
deploy/base/rbac.yaml and deploy/namespaced/role.yaml (an e2e test fails if
they differ): read workloads, patch their replicas with their zeroscaler.io/
annotations, and tell what it did with Events. The cluster-wide install also
reads Namespaces (rbac.yaml).
*/}}
{{- define "zeroscaler.workloadRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Leader election: one Lease, in the release namespace only. */}}
{{- define "zeroscaler.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end -}}

{{/* The namespace of an optional monitoring object: its own, else the release's. */}}
{{- define "zeroscaler.monitoringNamespace" -}}
{{- .namespace | default .root.Release.Namespace -}}
{{- end -}}
