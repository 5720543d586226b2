{{/*
Shared helpers. Naming: every object is "<fullname>-<component>". Labels: the standard
app.kubernetes.io/* set plus helm.sh/chart; selectors use name, instance and component only
(they never change across upgrades).
*/}}

{{- define "serval.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name; kept short enough for "-dashboard" and etcd pod names. */}}
{{- define "serval.fullname" -}}
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

{{- define "serval.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of a component's objects. Call with (dict "ctx" $ "component" "registry"). */}}
{{- define "serval.labels" -}}
helm.sh/chart: {{ include "serval.chart" .ctx }}
{{ include "serval.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: serval
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of a component. Call with (dict "ctx" $ "component" "registry"). */}}
{{- define "serval.selectorLabels" -}}
app.kubernetes.io/name: {{ include "serval.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "serval.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "serval.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "serval.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* etcd: the headless (peer) Service's name and one member's stable DNS name. */}}
{{- define "serval.etcd.headless" -}}
{{- printf "%s-etcd-headless" (include "serval.fullname" .) -}}
{{- end -}}

{{- define "serval.etcd.memberHost" -}}
{{- printf "%s-etcd-%d.%s.%s.svc.%s" (include "serval.fullname" .ctx) (int .index) (include "serval.etcd.headless" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain -}}
{{- end -}}

{{/* The etcd client endpoints the registry uses: the external list, or every member's stable name. */}}
{{- define "serval.etcd.endpoints" -}}
{{- if .Values.etcd.external.endpoints -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "%s:%d" (include "serval.etcd.memberHost" (dict "ctx" $ "index" $i)) (int $.Values.etcd.ports.client)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}
{{- end -}}

{{/* etcd --initial-cluster: name=http://<stable name>:<peer port>,... */}}
{{- define "serval.etcd.initialCluster" -}}
{{- $members := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $members = append $members (printf "%s-etcd-%d=http://%s:%d" (include "serval.fullname" $) $i (include "serval.etcd.memberHost" (dict "ctx" $ "index" $i)) (int $.Values.etcd.ports.peer)) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/* The registry address every client component dials: the Service's cluster DNS name. */}}
{{- define "serval.registry.address" -}}
{{- printf "%s-registry.%s.svc.%s:%d" (include "serval.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.registry.service.port) -}}
{{- end -}}

{{/* host:port for a listen option; IPv6 hosts get brackets. Call with (list host port). */}}
{{- define "serval.hostPort" -}}
{{- $host := index . 0 -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%d" $host (int (index . 1)) -}}
{{- else -}}
{{- printf "%s:%d" $host (int (index . 1)) -}}
{{- end -}}
{{- end -}}

{{- define "serval.dashboard.secretName" -}}
{{- default (printf "%s-dashboard" (include "serval.fullname" .)) .Values.dashboard.auth.existingSecret -}}
{{- end -}}

{{/* Pod-level security context of Serval's pods (etcd's too). */}}
{{- define "serval.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context: nothing beyond an unprivileged process. */}}
{{- define "serval.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every Serval container gets: the pod's identity (downward API). */}}
{{- define "serval.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/* Spread a component's pods over nodes. Call with (dict "ctx" $ "component" "x" "mode" "soft"). */}}
{{- define "serval.podAntiAffinity" -}}
podAntiAffinity:
{{- if eq .mode "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "serval.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 10 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "serval.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end }}
{{- end -}}

{{/* The affinity of a component: the user's, or the anti-affinity above. */}}
{{- define "serval.affinity" -}}
{{- $values := index .ctx.Values .component -}}
{{- if $values.affinity -}}
{{- toYaml $values.affinity -}}
{{- else -}}
{{- include "serval.podAntiAffinity" (dict "ctx" .ctx "component" .component "mode" $values.podAntiAffinity) -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks the JSON schema cannot express; fail with a message naming the values. */}}
{{- define "serval.validate" -}}
{{- if and (not .Values.etcd.external.endpoints) (gt (int .Values.registry.etcdMaxTxnOps) (int .Values.etcd.settings.maxTxnOps)) -}}
{{- fail (printf "registry.etcdMaxTxnOps (%d) must not exceed etcd.settings.maxTxnOps (%d): etcd would refuse the registry's larger transactions" (int .Values.registry.etcdMaxTxnOps) (int .Values.etcd.settings.maxTxnOps)) -}}
{{- end -}}
{{- if and .Values.registry.pdb.enabled (ge (int .Values.registry.pdb.minAvailable) (int .Values.registry.replicas)) (gt (int .Values.registry.replicas) 1) -}}
{{- fail (printf "registry.pdb.minAvailable (%d) must be below registry.replicas (%d), or no node could ever be drained" (int .Values.registry.pdb.minAvailable) (int .Values.registry.replicas)) -}}
{{- end -}}
{{- if eq (int .Values.dns.port) (int .Values.dns.metricsPort) -}}
{{- fail (printf "dns.port and dns.metricsPort must differ (both %d)" (int .Values.dns.port)) -}}
{{- end -}}
{{- if eq (int .Values.agent.salPort) (int .Values.agent.metricsPort) -}}
{{- fail (printf "agent.salPort and agent.metricsPort must differ (both %d): both are bound on the node" (int .Values.agent.salPort)) -}}
{{- end -}}
{{- if and .Values.dashboard.enabled .Values.dashboard.ingress.enabled (not .Values.dashboard.ingress.host) -}}
{{- fail "dashboard.ingress.host must be set when dashboard.ingress.enabled is true" -}}
{{- end -}}
{{- end -}}
