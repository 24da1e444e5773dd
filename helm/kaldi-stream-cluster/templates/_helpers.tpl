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

{{- define "ksc.modelPrepImage" -}}
{{- printf "%s:%s" .Values.image.modelPrep.repository (default .Chart.AppVersion .Values.image.modelPrep.tag) -}}
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

{{/* Every model id of the release, comma-separated: the gateway's allow-list (KSC_MODELS). */}}
{{- define "ksc.modelIds" -}}
{{- $ids := list -}}
{{- range .Values.models }}{{ $ids = append $ids .id }}{{ end -}}
{{- join "," $ids -}}
{{- end -}}

{{- define "ksc.redisHost" -}}
{{- printf "%s-redis" (include "ksc.fullname" .) -}}
{{- end -}}

{{/*
An external URL taken apart: scheme, the user name it carries (if any), the host list
and the rest (path and options). A password in the URL is refused by ksc.validate: it
comes from the Secret, so that KEDA and the pods read the same one.
*/}}
{{- define "ksc.urlParts" -}}
{{- $parts := splitn "://" 2 . -}}
{{- $rest := $parts._1 | default "" -}}
{{- $authority := regexFind "^[^/?]*" $rest -}}
{{- $tail := trimPrefix $authority $rest -}}
{{- $user := "" -}}
{{- $hosts := $authority -}}
{{- if contains "@" $authority -}}
{{- $at := splitList "@" $authority -}}
{{- $hosts = last $at -}}
{{- $user = join "@" (initial $at) -}}
{{- end -}}
{{- toJson (dict "scheme" $parts._0 "user" $user "hosts" $hosts "tail" $tail) -}}
{{- end -}}

{{/* The Redis ACL user of the pods and KEDA: redis.auth.username, else the URL's. */}}
{{- define "ksc.redisUsername" -}}
{{- $r := .Values.redis -}}
{{- if $r.auth.username -}}
{{- $r.auth.username -}}
{{- else if and (has $r.mode (list "standalone" "cluster")) $r.external.url -}}
{{- (include "ksc.urlParts" $r.external.url | fromJson).user -}}
{{- end -}}
{{- end -}}

{{/* Where the pods find the CA certificate of an external Redis with TLS. */}}
{{- define "ksc.redisCaPath" -}}
{{- printf "/etc/ksc/redis-tls/%s" .Values.redis.tls.caSecretKey -}}
{{- end -}}

{{- define "ksc.redisTls" -}}
{{- $r := .Values.redis -}}
{{- if and (ne $r.mode "internal") (or $r.tls.enabled (hasPrefix "rediss" $r.external.url)) }}true{{ end -}}
{{- end -}}

{{/*
KSC_REDIS_URL as the pods see it: scheme://[user][:$(REDIS_PASSWORD)]@hosts/path?options.
The password comes from $(REDIS_PASSWORD), which Kubernetes expands from the Secret (so
it must be URL-safe); the user name is checked to be URL-safe by values.schema.json.
*/}}
{{- define "ksc.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- $tls := include "ksc.redisTls" . -}}
{{- $scheme := "redis" -}}
{{- $hosts := printf "%s:6379" (include "ksc.redisHost" .) -}}
{{- $tail := "/0" -}}
{{- $options := list -}}
{{- if eq $r.mode "sentinel" -}}
{{- $scheme = ternary "rediss+sentinel" "redis+sentinel" (eq $tls "true") -}}
{{- $hosts = join "," $r.sentinel.addresses -}}
{{- $tail = printf "/%s/%d" $r.sentinel.masterName (int $r.sentinel.db) -}}
{{- if and $r.auth.enabled (not $r.sentinel.usePassword) -}}
{{- $options = append $options "sentinel_password=" -}}
{{- end -}}
{{- if $r.sentinel.username -}}
{{- $options = append $options (printf "sentinel_username=%s" $r.sentinel.username) -}}
{{- end -}}
{{- else if ne $r.mode "internal" -}}
{{- $url := include "ksc.urlParts" $r.external.url | fromJson -}}
{{- $scheme = $url.scheme -}}
{{- $hosts = $url.hosts -}}
{{- $tail = $url.tail -}}
{{- end -}}
{{- if and (eq $tls "true") $r.tls.caSecret -}}
{{- $options = append $options (printf "ssl_ca_certs=%s" (include "ksc.redisCaPath" .)) -}}
{{- end -}}
{{- $user := include "ksc.redisUsername" . -}}
{{- $credentials := "" -}}
{{- if $r.auth.enabled -}}
{{- $credentials = printf "%s:$(REDIS_PASSWORD)@" $user -}}
{{- else if $user -}}
{{- $credentials = printf "%s@" $user -}}
{{- end -}}
{{- $url := printf "%s://%s%s%s" $scheme $credentials $hosts $tail -}}
{{- if $options -}}
{{- $url = printf "%s%s%s" $url (ternary "&" "?" (contains "?" $tail)) (join "&" $options) -}}
{{- end -}}
{{- $url -}}
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
{{- (include "ksc.urlParts" $r.external.url | fromJson).hosts -}}
{{- end -}}
{{- end -}}

{{/* The database number KEDA reads (standalone/internal only). */}}
{{- define "ksc.redisDb" -}}
{{- $r := .Values.redis -}}
{{- if eq $r.mode "standalone" -}}
{{- $db := regexFind "^/[0-9]+" (include "ksc.urlParts" $r.external.url | fromJson).tail -}}
{{- default "0" (trimPrefix "/" $db) -}}
{{- else if eq $r.mode "sentinel" -}}
{{- $r.sentinel.db -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/* Whether KEDA needs a TriggerAuthentication: a password, or a CA to check Redis with. */}}
{{- define "ksc.kedaAuth" -}}
{{- $r := .Values.redis -}}
{{- if or $r.auth.enabled (and (include "ksc.redisTls" .) $r.tls.caSecret) }}true{{ end -}}
{{- end -}}

{{/*
Redis settings every pod gets. REDIS_PASSWORD first, so that KSC_REDIS_URL can expand
it; REDIS_USERNAME and REDIS_SENTINEL_USERNAME are also where KEDA reads the user names
(`usernameFromEnv`, from the decoder Deployment).
*/}}
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
{{- with include "ksc.redisUsername" . }}
- name: REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if and (eq .Values.redis.mode "sentinel") .Values.redis.sentinel.username }}
- name: REDIS_SENTINEL_USERNAME
  value: {{ .Values.redis.sentinel.username | quote }}
{{- end }}
{{- end -}}

{{/* The CA certificate of an external Redis with TLS: volume and mount. */}}
{{- define "ksc.redisTlsVolume" -}}
{{- if and (include "ksc.redisTls" .) .Values.redis.tls.caSecret }}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.tls.caSecret }}
    items:
      - key: {{ .Values.redis.tls.caSecretKey }}
        path: {{ .Values.redis.tls.caSecretKey }}
{{- end }}
{{- end -}}

{{- define "ksc.redisTlsMount" -}}
{{- if and (include "ksc.redisTls" .) .Values.redis.tls.caSecret }}
- name: redis-tls
  mountPath: /etc/ksc/redis-tls
  readOnly: true
{{- end }}
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
{{- if and (eq $r.mode "cluster") (not (regexMatch "^rediss?\\+cluster://" $r.external.url)) -}}
{{- fail "redis.mode=cluster needs a redis+cluster:// or rediss+cluster://host:port[,host:port] URL in redis.external.url" -}}
{{- end -}}
{{- if and (has $r.mode (list "standalone" "cluster")) $r.external.url -}}
{{- $url := include "ksc.urlParts" $r.external.url | fromJson -}}
{{- if contains ":" $url.user -}}
{{- fail "redis.external.url carries a password: leave it out (the pods and KEDA read it from the Secret, redis.auth) and give the user name alone, or in redis.auth.username" -}}
{{- end -}}
{{- if and $r.tls.enabled (not (hasPrefix "rediss" $url.scheme)) -}}
{{- fail (printf "redis.tls.enabled needs a TLS URL in redis.external.url (%s://…, not %s://…)" (replace "redis" "rediss" $url.scheme) $url.scheme) -}}
{{- end -}}
{{- end -}}
{{- if eq $r.mode "internal" -}}
{{- if not $r.auth.enabled -}}
{{- fail "the internal Redis needs redis.auth.enabled: it runs in protected mode, which refuses clients without a password" -}}
{{- end -}}
{{- if $r.tls.enabled -}}
{{- fail "redis.tls applies to an external Redis (redis.mode standalone, sentinel or cluster); the internal one is reached only by this release's pods (networkPolicy)" -}}
{{- end -}}
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
{{- if and .Values.capabilityChecks (eq $mode "keda") (not (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject")) -}}
{{- fail "autoscaling.mode=keda, but this cluster has no KEDA (no keda.sh/v1alpha1 ScaledObject): install KEDA first (docs/deploy.md), or use autoscaling.mode=hpa. Rendering without a cluster (helm template)? Add --api-versions keda.sh/v1alpha1/ScaledObject, or set capabilityChecks=false" -}}
{{- end -}}
{{- if and .Values.capabilityChecks .Values.metrics.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
{{- fail "metrics.serviceMonitor.enabled, but this cluster has no Prometheus Operator (no monitoring.coreos.com/v1 ServiceMonitor): install it, or turn metrics.serviceMonitor.enabled off. Rendering without a cluster (helm template)? Add --api-versions monitoring.coreos.com/v1/ServiceMonitor, or set capabilityChecks=false" -}}
{{- end -}}
{{- range .Values.models -}}
{{- if and .volume (not (hasPrefix (printf "/models/%s" .id) .source)) -}}
{{- fail (printf "models[%s].volume is mounted at /models/%s: its source must be that directory or one below it (got %q)" .id .id .source) -}}
{{- end -}}
{{- if and .prepare (not (hasPrefix "/" .source)) -}}
{{- fail (printf "models[%s].prepare prepares a model directory: source must be an absolute path (got %q)" .id .source) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.gateway.defaultModel (not (has .Values.gateway.defaultModel $ids)) -}}
{{- fail (printf "gateway.defaultModel %q is not among models[].id" .Values.gateway.defaultModel) -}}
{{- end -}}
{{- end -}}
