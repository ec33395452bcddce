{{/*
The Ray Serve config (KubeRay serveConfigV2), built from .Values.serve by the same rules as
`mmserve serve-config` (server/rayserve/serve_config.py, ray_backend.task_deployment_options):

- one application: `ingress` plus `task-<name>` for every key of serve.tasks, in name order;
- a task with `autoscaling` gets `autoscaling_config` (min 1, max 4, target 16 by default),
  otherwise `num_replicas` (1 by default); then max_ongoing_requests (64),
  max_queued_requests (256) and ray_actor_options num_cpus (0.5) / num_gpus (0);
- the ingress: ray.ingress_replicas (1), ray.ingress_max_ongoing_requests (1000),
  ray.ingress_num_cpus (0.25);
- args.settings: only what the values set (serve.settings, the non-empty serve.tasks entries,
  serve.ray); the pods' environment and mmserve's defaults supply the rest;
- runtime_env.env_vars.MLFLOW_TRACKING_URI when there is a tracking server (plus
  serve.runtimeEnv, a chart-only addition for third-party plugins);
- http_options: host 0.0.0.0, port serve.port; proxy_location EveryNode.

tests/helm/test_serve_config_parity.py renders this and compares it, as parsed structures,
with `mmserve serve-config` for the same settings. Defaults use hasKey, not `default`, since
0 is a valid value for several fields (num_gpus, min_replicas, max_queued_requests).
Rendered as JSON (valid YAML): Helm's toYaml would write large integers as 1e+06.
*/}}
{{- define "mmserve.serveConfig" -}}
{{- $serve := .Values.serve -}}
{{- $ray := $serve.ray | default dict -}}
{{- $tasks := $serve.tasks | default dict -}}
{{- $deployments := list -}}
{{- $ingress := dict "name" "ingress"
      "num_replicas" (ternary (get $ray "ingress_replicas") 1 (hasKey $ray "ingress_replicas"))
      "max_ongoing_requests" (ternary (get $ray "ingress_max_ongoing_requests") 1000 (hasKey $ray "ingress_max_ongoing_requests"))
      "ray_actor_options" (dict "num_cpus" (ternary (get $ray "ingress_num_cpus") 0.25 (hasKey $ray "ingress_num_cpus"))) -}}
{{- $deployments = append $deployments $ingress -}}
{{- $setTasks := dict -}}
{{- range $name := keys $tasks | sortAlpha -}}
{{- $t := get $tasks $name | default dict -}}
{{- if $t }}{{ $_ := set $setTasks $name $t }}{{ end -}}
{{- $d := dict "name" (printf "task-%s" $name) -}}
{{- $maxOngoing := ternary (get $t "max_ongoing_requests") 64 (hasKey $t "max_ongoing_requests") -}}
{{- if hasKey $t "autoscaling" -}}
{{- if hasKey $t "num_replicas" -}}
{{- fail (printf "serve.tasks.%s: set num_replicas or autoscaling, not both (to run a fixed num_replicas, also set autoscaling: null)" $name) -}}
{{- end -}}
{{- $a := $t.autoscaling | default dict -}}
{{- $min := ternary (get $a "min_replicas") 1 (hasKey $a "min_replicas") -}}
{{- $max := ternary (get $a "max_replicas") 4 (hasKey $a "max_replicas") -}}
{{- $target := ternary (get $a "target_ongoing_requests") 16.0 (hasKey $a "target_ongoing_requests") -}}
{{- if gt (float64 $min) (float64 $max) -}}
{{- fail (printf "serve.tasks.%s.autoscaling: min_replicas (%v) is above max_replicas (%v)" $name $min $max) -}}
{{- end -}}
{{- if gt (float64 $target) (float64 $maxOngoing) -}}
{{- fail (printf "serve.tasks.%s.autoscaling: target_ongoing_requests (%v) is above max_ongoing_requests (%v): replicas could never reach the target" $name $target $maxOngoing) -}}
{{- end -}}
{{- $_ := set $d "autoscaling_config" (dict "min_replicas" $min "max_replicas" $max "target_ongoing_requests" $target) -}}
{{- else -}}
{{- $_ := set $d "num_replicas" (ternary (get $t "num_replicas") 1 (hasKey $t "num_replicas")) -}}
{{- end -}}
{{- $_ := set $d "max_ongoing_requests" $maxOngoing -}}
{{- $_ := set $d "max_queued_requests" (ternary (get $t "max_queued_requests") 256 (hasKey $t "max_queued_requests")) -}}
{{- $_ := set $d "ray_actor_options" (dict
      "num_cpus" (ternary (get $t "num_cpus") 0.5 (hasKey $t "num_cpus"))
      "num_gpus" (ternary (get $t "num_gpus") 0 (hasKey $t "num_gpus"))) -}}
{{- $deployments = append $deployments $d -}}
{{- end -}}
{{- $settings := deepCopy ($serve.settings | default dict) -}}
{{- if $setTasks }}{{ $_ := set $settings "tasks" $setTasks }}{{ end -}}
{{- if $ray }}{{ $_ := set $settings "ray" $ray }}{{ end -}}
{{- $app := dict
      "name" (get $ray "app_name" | default "mmserve")
      "route_prefix" "/"
      "import_path" "mmserve.server.rayserve.ray_backend:build_app"
      "args" (dict "settings" $settings)
      "deployments" $deployments -}}
{{- $runtimeEnv := deepCopy ($serve.runtimeEnv | default dict) -}}
{{- $uri := include "mmserve.mlflow.trackingUri" . -}}
{{- if $uri -}}
{{- $envVars := $runtimeEnv.env_vars | default dict -}}
{{- $_ := set $envVars "MLFLOW_TRACKING_URI" $uri -}}
{{- $_ := set $runtimeEnv "env_vars" $envVars -}}
{{- end -}}
{{- if $runtimeEnv }}{{ $_ := set $app "runtime_env" $runtimeEnv }}{{ end -}}
{{- $config := dict
      "proxy_location" "EveryNode"
      "http_options" (dict "host" "0.0.0.0" "port" (int $serve.port))
      "applications" (list $app) -}}
{{- toPrettyJson $config -}}
{{- end -}}
