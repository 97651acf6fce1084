"""The Pod Security Standards' `restricted` profile, as the Pod Security Admission controller
applies it (https://kubernetes.io/docs/concepts/security/pod-security-standards/): every
`baseline` control plus the `restricted` ones, over a pod template's metadata and spec.

`restricted_violations` answers what a namespace labelled
`pod-security.kubernetes.io/enforce=restricted` would refuse, one line per violation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Baseline: capabilities a container may add (the container runtimes' defaults).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
# Baseline: the "safe" sysctls.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
# Restricted: the only volume sources allowed.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every container of a pod spec, init and ephemeral ones included, with its path."""
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"{field}[{container.get('name')}]", container


def restricted_violations(template: Mapping[str, Any]) -> list[str]:
    """What the `restricted` profile refuses in a pod template (`metadata` and `spec`)."""
    metadata = template.get("metadata") or {}
    spec = template.get("spec") or {}
    pod = spec.get("securityContext") or {}
    found: list[str] = []

    # --- baseline ---
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"spec.{field} must be false")
    if (pod.get("windowsOptions") or {}).get("hostProcess"):
        found.append("spec.securityContext.windowsOptions.hostProcess must be false")
    for name, value in (metadata.get("annotations") or {}).items():
        if name.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"annotation {name}: AppArmor {value!r} is not allowed")
    found += _apparmor("spec.securityContext", pod)
    found += _selinux("spec.securityContext", pod)
    if (pod.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append("spec.securityContext.seccompProfile.type must not be Unconfined")
    for sysctl in pod.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not safe")
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if "hostPath" in sources:
            found.append(f"volume {volume.get('name')}: hostPath is not allowed")
        # --- restricted: volume types ---
        elif not sources <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume.get('name')}: {sorted(sources)} is not allowed")

    # --- restricted, at the pod's level ---
    if pod.get("runAsUser") == 0:
        found.append("spec.securityContext.runAsUser must not be 0")
    pod_non_root = pod.get("runAsNonRoot") is True
    pod_seccomp = (pod.get("seccompProfile") or {}).get("type") in SECCOMP_TYPES

    for path, container in containers(spec):
        context = container.get("securityContext") or {}
        where = f"{path}.securityContext"
        # baseline
        if context.get("privileged"):
            found.append(f"{where}.privileged must be false")
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{where}.windowsOptions.hostProcess must be false")
        capabilities = context.get("capabilities") or {}
        added = set(capabilities.get("add") or [])
        if not added <= BASELINE_CAPABILITIES:
            found.append(f"{where}.capabilities.add: {sorted(added - BASELINE_CAPABILITIES)}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{path}: hostPort {port['hostPort']} is not allowed")
        found += _apparmor(where, context)
        found += _selinux(where, context)
        if context.get("procMount", "Default") != "Default":
            found.append(f"{where}.procMount must be Default")
        # restricted
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}.allowPrivilegeEscalation must be false")
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is not True and not pod_non_root):
            found.append(f"{where}.runAsNonRoot must be true (here or for the pod)")
        if context.get("runAsUser") == 0:
            found.append(f"{where}.runAsUser must not be 0")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined" or (seccomp not in SECCOMP_TYPES and not pod_seccomp):
            found.append(f"{where}.seccompProfile.type must be RuntimeDefault or Localhost")
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{where}.capabilities.drop must contain ALL")
        if not added <= {"NET_BIND_SERVICE"}:
            found.append(f"{where}.capabilities.add may only hold NET_BIND_SERVICE")
    return found


def _apparmor(where: str, context: Mapping[str, Any]) -> list[str]:
    profile = context.get("appArmorProfile")
    if profile is not None and profile.get("type") not in APPARMOR_TYPES:
        return [f"{where}.appArmorProfile.type {profile.get('type')!r} is not allowed"]
    return []


def _selinux(where: str, context: Mapping[str, Any]) -> list[str]:
    options = context.get("seLinuxOptions") or {}
    found = []
    if options.get("type", "") not in SELINUX_TYPES:
        found.append(f"{where}.seLinuxOptions.type {options['type']!r} is not allowed")
    for field in ("user", "role"):
        if options.get(field):
            found.append(f"{where}.seLinuxOptions.{field} must not be set")
    return found
