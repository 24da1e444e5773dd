{{/* Chart name, truncated to a DNS label. */}}
{{- define "ksc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name: fullnameOverride, else the release name. */}}
{{- define "ksc.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "ksc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every resource carries; "component" is added by each template. */}}
{{- define "ksc.labels" -}}
helm.sh/chart: {{ include "ksc.chart" . }}
app.kubernetes.io/name: {{ include "ksc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: kaldi-stream-cluster
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; call with (dict "root" $ "component" "gateway"). */}}
{{- define "ksc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ksc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ksc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ksc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ksc.gatewayImage" -}}
{{- printf "%s:%s" .Values.image.gateway.repository (default .Chart.AppVersion .Values.image.gateway.tag) -}}
{{- end -}}

{{- define "ksc.workerImage" -}}
{{- printf "%s:%s" .Values.image.worker.repository (default .Chart.AppVersion .Values.image.worker.tag) -}}
{{- end -}}

{{- define "ksc.redisSecretName" -}}
{{- default (printf "%s-redis" (include "ksc.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/*
Host names the gateway answers to (its DNS-rebinding check, `KSC_ALLOWED_HOSTS`): the
gateway Service's in-cluster names, the Ingress host when there is one, and
gateway.allowedHosts. IP addresses and localhost always pass.
*/}}
{{- define "ksc.allowedHosts" -}}
{{- $svc := printf "%s-gateway" (include "ksc.fullname" .) -}}
{{- $hosts := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) -}}
{{- if .Values.gateway.ingress.enabled -}}
{{- $hosts = append $hosts .Values.gateway.ingress.host -}}
{{- end -}}
{{- join "," (concat $hosts .Values.gateway.allowedHosts) -}}
{{- end -}}

{{- define "ksc.redisHost" -}}
{{- printf "%s-redis" (include "ksc.fullname" .) -}}
{{- end -}}

{{/* "redis://host:6379/0" -> "redis://:$(REDIS_PASSWORD)@host:6379/0" when auth is on. */}}
{{- define "ksc.withPassword" -}}
{{- $parts := splitn "://" 2 .url -}}
{{- if .auth -}}
{{- printf "%s://:$(REDIS_PASSWORD)@%s" $parts._0 $parts._1 -}}
{{- else -}}
{{- .url -}}
{{- end -}}
{{- end -}}

{{/* KSC_REDIS_URL as the pods see it (the password comes from $(REDIS_PASSWORD)). */}}
{{- define "ksc.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- if eq $r.mode "internal" -}}
{{- include "ksc.withPassword" (dict "url" (printf "redis://%s:6379/0" (include "ksc.redisHost" .)) "auth" $r.auth.enabled) -}}
{{- else if eq $r.mode "sentinel" -}}
{{- include "ksc.withPassword" (dict "url" (printf "redis+sentinel://%s/%s/%d" (join "," $r.sentinel.addresses) $r.sentinel.masterName (int $r.sentinel.db)) "auth" $r.auth.enabled) -}}
{{- else -}}
{{- include "ksc.withPassword" (dict "url" $r.external.url "auth" $r.auth.enabled) -}}
{{- end -}}
{{- end -}}

{{/* KEDA's address(es): host:port list, reachable from KEDA's namespace. */}}
{{- define "ksc.kedaAddress" -}}
{{- $r := .Values.redis -}}
{{- if eq $r.mode "internal" -}}
{{- printf "%s.%s.svc:6379" (include "ksc.redisHost" .) .Release.Namespace -}}
{{- else if eq $r.mode "sentinel" -}}
{{- join "," $r.sentinel.addresses -}}
{{- else if $r.external.kedaAddress -}}
{{- $r.external.kedaAddress -}}
{{- else -}}
{{- $rest := (splitn "://" 2 $r.external.url)._1 -}}
{{- $hosts := (splitList "/" $rest | first) -}}
{{- splitList "@" $hosts | last -}}
{{- end -}}
{{- end -}}

{{/* The database number KEDA reads (standalone/internal only). */}}
{{- define "ksc.redisDb" -}}
{{- $r := .Values.redis -}}
{{- if eq $r.mode "standalone" -}}
{{- $rest := (splitn "://" 2 $r.external.url)._1 -}}
{{- $path := splitList "/" $rest -}}
{{- if and (gt (len $path) 1) (ne (index $path 1) "") -}}{{ index $path 1 }}{{- else -}}0{{- end -}}
{{- else if eq $r.mode "sentinel" -}}
{{- $r.sentinel.db -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/* REDIS_PASSWORD first, so that KSC_REDIS_URL can expand it. */}}
{{- define "ksc.redisEnv" -}}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ksc.redisSecretName" . }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
{{- end }}
- name: KSC_REDIS_URL
  value: {{ include "ksc.redisUrl" . | quote }}
- name: KSC_PREFIX
  value: {{ .Values.prefix | quote }}
- name: KSC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* True when some decoder may run with zero pods. */}}
{{- define "ksc.scalesToZero" -}}
{{- $zero := false -}}
{{- range .Values.models }}{{ if eq (int .replicas) 0 }}{{ $zero = true }}{{ end }}{{ end -}}
{{- if and $zero (eq .Values.autoscaling.mode "keda") }}true{{ end -}}
{{- end -}}

{{/* Invalid combinations stop the render with a message naming the value to change. */}}
{{- define "ksc.validate" -}}
{{- $r := .Values.redis -}}
{{- if not (has $r.mode (list "internal" "standalone" "sentinel" "cluster")) -}}
{{- fail (printf "redis.mode must be internal, standalone, sentinel or cluster (got %q)" $r.mode) -}}
{{- end -}}
{{- if and (has $r.mode (list "standalone" "cluster")) (not $r.external.url) -}}
{{- fail (printf "redis.mode=%s needs redis.external.url" $r.mode) -}}
{{- end -}}
{{- if and (eq $r.mode "standalone") $r.external.url (not (regexMatch "^rediss?://" $r.external.url)) -}}
{{- fail "redis.mode=standalone needs a redis:// or rediss:// URL in redis.external.url" -}}
{{- end -}}
{{- if and (eq $r.mode "cluster") (not (regexMatch "^redis\\+cluster://" $r.external.url)) -}}
{{- fail "redis.mode=cluster needs a redis+cluster://host:port[,host:port] URL in redis.external.url" -}}
{{- end -}}
{{- if and (eq $r.mode "sentinel") (not $r.sentinel.addresses) -}}
{{- fail "redis.mode=sentinel needs redis.sentinel.addresses" -}}
{{- end -}}
{{- if and (ne $r.mode "internal") $r.auth.enabled (not $r.auth.existingSecret) (not $r.auth.password) -}}
{{- fail "an external Redis with redis.auth.enabled needs redis.auth.existingSecret (or redis.auth.password)" -}}
{{- end -}}
{{- $mode := .Values.autoscaling.mode -}}
{{- if not (has $mode (list "keda" "hpa" "none")) -}}
{{- fail (printf "autoscaling.mode must be keda, hpa or none (got %q)" $mode) -}}
{{- end -}}
{{- if not .Values.models -}}
{{- fail "models: at least one model must be served" -}}
{{- end -}}
{{- $ids := list -}}
{{- range .Values.models -}}
{{- if has .id $ids -}}{{- fail (printf "models: id %q appears twice" .id) -}}{{- end -}}
{{- $ids = append $ids .id -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$" .id) -}}
{{- fail (printf "models: id %q must be a lowercase DNS label of at most 20 characters" .id) -}}
{{- end -}}
{{- if lt (int .slots) 1 -}}{{- fail (printf "models[%s].slots must be at least 1" .id) -}}{{- end -}}
{{- if lt (int .maxReplicas) (int .replicas) -}}
{{- fail (printf "models[%s].maxReplicas is below its replicas" .id) -}}
{{- end -}}
{{- if and (eq (int .replicas) 0) (ne $mode "keda") -}}
{{- fail (printf "models[%s].replicas=0 needs autoscaling.mode=keda (only KEDA scales from zero)" .id) -}}
{{- end -}}
{{- if and (eq $mode "keda") (gt (int $.Values.autoscaling.keda.sessionsPerPod) (int .slots)) -}}
{{- fail (printf "autoscaling.keda.sessionsPerPod (%d) exceeds models[%s].slots (%d)" (int $.Values.autoscaling.keda.sessionsPerPod) .id (int .slots)) -}}
{{- end -}}
{{- end -}}
{{- if and (include "ksc.scalesToZero" .) (eq (float64 .Values.gateway.admissionWait) 0.0) -}}
{{- fail "a decoder with replicas=0 (scale to zero) needs gateway.admissionWait > 0: with 0 the gateway refuses (status 9) before any session is queued, so KEDA never sees one" -}}
{{- end -}}
{{- if and .Values.gateway.defaultModel (not (has .Values.gateway.defaultModel $ids)) -}}
{{- fail (printf "gateway.defaultModel %q is not among models[].id" .Values.gateway.defaultModel) -}}
{{- end -}}
{{- end -}}
