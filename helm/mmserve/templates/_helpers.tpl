{{/* Names and labels follow `helm create`: nameOverride, fullnameOverride, app.kubernetes.io/*. */}}

{{- define "mmserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name. Kept to 40 characters (not 63): KubeRay derives the RayCluster,
its services and pods from the RayService name (`<name>-<5 chars>-head-svc`, `-serve-svc`),
and those must stay within Kubernetes' 63-character limit.
*/}}
{{- define "mmserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mmserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mmserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mmserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mmserve.labels" -}}
helm.sh/chart: {{ include "mmserve.chart" . }}
{{ include "mmserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mmserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "mmserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mmserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mmserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}

{{- define "mmserve.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "mmserve.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The tracking URI every Ray pod gets: the bundled server, or mlflow.externalUri. */}}
{{- define "mmserve.mlflow.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "mmserve.mlflow.fullname" .) .Release.Namespace (int .Values.mlflow.service.port) -}}
{{- else -}}
{{- .Values.mlflow.externalUri -}}
{{- end -}}
{{- end -}}

{{/* The name KubeRay gives the RayService's Serve service (the Ingress backend). */}}
{{- define "mmserve.serveServiceName" -}}
{{- printf "%s-serve-svc" (include "mmserve.fullname" .) -}}
{{- end -}}

{{/* Environment of the Ray head and worker containers. */}}
{{- define "mmserve.rayEnv" -}}
{{- $uri := include "mmserve.mlflow.trackingUri" . -}}
{{- if $uri }}
- name: MLFLOW_TRACKING_URI
  value: {{ $uri | quote }}
{{- end }}
- name: MMSERVE_DATA_DIR
  value: {{ .Values.ray.dataDir | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "mmserve.rayEnvFrom" -}}
{{- with .Values.mlflow.clientCredentials.existingSecret }}
- secretRef:
    name: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod annotations of the Ray pods: Prometheus scraping of mmserve's /metrics on the Serve port. */}}
{{- define "mmserve.rayPodAnnotations" -}}
{{- $annotations := dict -}}
{{- if .root.Values.metrics.prometheusAnnotations -}}
{{- $_ := set $annotations "prometheus.io/scrape" "true" -}}
{{- $_ := set $annotations "prometheus.io/port" (toString (int .root.Values.serve.port)) -}}
{{- $_ := set $annotations "prometheus.io/path" .root.Values.metrics.path -}}
{{- end -}}
{{- $annotations = merge (deepCopy (.group.podAnnotations | default dict)) (deepCopy (.root.Values.podAnnotations | default dict)) $annotations -}}
{{- toYaml $annotations -}}
{{- end -}}

{{/* rayStartParams: KubeRay wants every value as a string ("0", "true"). */}}
{{- define "mmserve.rayStartParams" -}}
{{- if . -}}
{{- range $k, $v := . }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- else -}}
{}
{{- end -}}
{{- end -}}
