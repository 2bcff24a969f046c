#!/usr/bin/env bash
# Reports the host settings that matter for the Runnel dataplane, each as OK or WARN with
# the command that fixes it. Read-only: it changes nothing (tuning/README.md explains every
# knob and its effect).
#
#   tuning/check.sh [interface...]     default: the default-route interface and lo
#
# Exit status: 0 when every check is OK, 1 when any check warns (so scripts can gate on it).

set -uo pipefail

warnings=0

ok() { printf 'OK    %-22s %s\n' "$1" "$2"; }
warn() {
    printf 'WARN  %-22s %s\n' "$1" "$2"
    printf '      %-22s fix: %s\n' "" "$3"
    warnings=$((warnings + 1))
}
info() { printf 'INFO  %-22s %s\n' "$1" "$2"; }

sysctl_value() {
    local path="/proc/sys/${1//.//}"
    [ -r "$path" ] && cat "$path"
}

# --- kernel -------------------------------------------------------------------------------
kernel="$(uname -r)"
kernel_major="${kernel%%.*}"
kernel_minor="${kernel#*.}"
kernel_minor="${kernel_minor%%[.-]*}"
if [ "$kernel_major" -gt 6 ] || { [ "$kernel_major" -eq 6 ] && [ "$kernel_minor" -ge 1 ]; }; then
    ok "kernel" "$kernel (>= 6.1: multishot recvmsg, buffer rings, DEFER_TASKRUN, UDP GSO/GRO)"
else
    warn "kernel" "$kernel (< 6.1: shards need multishot recvmsg (6.0) and DEFER_TASKRUN (6.1))" \
        "upgrade the kernel (Debian 12: linux-image-amd64 is 6.1)"
fi

# --- cores --------------------------------------------------------------------------------
cores="$(nproc 2>/dev/null || echo 1)"
if [ "$cores" -ge 2 ]; then
    ok "cores" "$cores (one shard per core by default: node.shards = $cores)"
else
    warn "cores" "$cores (one shard; the control process shares its core)" \
        "run on a machine with >= 2 cores, or accept the shared core"
fi

# --- locked memory ------------------------------------------------------------------------
memlock_min_kib=512
memlock="$(ulimit -l)"
if [ "$memlock" = "unlimited" ] || [ "$memlock" -ge 8192 ]; then
    ok "memlock" "$memlock KiB (glommio needs >= $memlock_min_kib KiB per executor)"
elif [ "$memlock" -ge "$memlock_min_kib" ]; then
    warn "memlock" "$memlock KiB: enough for glommio ($memlock_min_kib KiB) but tight for many shards" \
        "ulimit -l unlimited (shell), LimitMEMLOCK=infinity (systemd), --ulimit memlock=-1 (docker)"
else
    warn "memlock" "$memlock KiB < $memlock_min_kib KiB: the node refuses to start its shards" \
        "ulimit -l unlimited (shell), LimitMEMLOCK=infinity (systemd), --ulimit memlock=-1 (docker)"
fi

# --- socket buffers -----------------------------------------------------------------------
# Shards ask for an 8 MiB receive buffer (dataplane/node/src/shard/mod.rs): SO_RCVBUFFORCE as
# root, which ignores net.core.rmem_max; otherwise SO_RCVBUF, which the kernel caps there. The
# credit window each shard grants a sender (2048 datagrams, 3 MB) must fit in it. Sends keep up
# to 64 GSO sends of 64 KiB in flight per shard.
buffer_min_bytes=$((8 << 20))
for name in rmem_max wmem_max; do
    value="$(sysctl_value "net.core.$name")"
    if [ -z "$value" ]; then
        info "net.core.$name" "unreadable (not Linux, or /proc/sys not mounted)"
    elif [ "$value" -ge "$buffer_min_bytes" ]; then
        ok "net.core.$name" "$value bytes (>= $buffer_min_bytes)"
    else
        warn "net.core.$name" "$value bytes < $buffer_min_bytes: bursts overflow the socket buffer and drop" \
            "sysctl -w net.core.$name=$buffer_min_bytes (persist in /etc/sysctl.d/90-runnel.conf)"
    fi
done

# --- io_uring -----------------------------------------------------------------------------
io_uring_disabled="$(sysctl_value kernel.io_uring_disabled)"
case "$io_uring_disabled" in
    "") ok "io_uring" "no kernel.io_uring_disabled sysctl (kernel < 6.6): io_uring enabled" ;;
    0) ok "io_uring" "kernel.io_uring_disabled = 0 (enabled for all)" ;;
    1) warn "io_uring" "kernel.io_uring_disabled = 1: only root and the io_uring_group may use io_uring" \
        "sysctl -w kernel.io_uring_disabled=0, or run the node as root / in kernel.io_uring_group" ;;
    *) warn "io_uring" "kernel.io_uring_disabled = $io_uring_disabled: io_uring is off, shards cannot start" \
        "sysctl -w kernel.io_uring_disabled=0" ;;
esac

# --- CPU frequency governor ---------------------------------------------------------------
governors="$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort | uniq -c | awk '{printf "%s%s×%s", sep, $1, $2; sep=", "}')"
if [ -z "$governors" ]; then
    ok "cpu governor" "no cpufreq interface (VM or fixed frequency): nothing to tune"
elif ! grep -qv performance /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null; then
    ok "cpu governor" "$governors"
else
    warn "cpu governor" "$governors: cores clock down between bursts, adding latency" \
        "cpupower frequency-set -g performance (or: echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)"
fi

# --- UDP GSO / GRO per interface ----------------------------------------------------------
interfaces=("$@")
if [ "${#interfaces[@]}" -eq 0 ]; then
    default_interface="$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')"
    interfaces=(lo)
    [ -n "$default_interface" ] && interfaces+=("$default_interface")
fi
if ! command -v ethtool >/dev/null 2>&1; then
    warn "ethtool" "not installed: cannot read GRO/GSO offload settings" "apt-get install -y ethtool"
else
    for interface in "${interfaces[@]}"; do
        features="$(ethtool -k "$interface" 2>/dev/null)"
        if [ -z "$features" ]; then
            info "$interface" "ethtool -k failed (no such interface?)"
            continue
        fi
        feature() { awk -v name="$1:" '$1 == name {print $2; exit}' <<<"$features"; }
        gro="$(feature generic-receive-offload)"
        gso="$(feature generic-segmentation-offload)"
        udp_segmentation="$(feature tx-udp-segmentation)"
        if [ "$gro" = "on" ]; then
            ok "$interface gro" "generic-receive-offload on: UDP_GRO sockets get coalesced buffers"
        else
            warn "$interface gro" "generic-receive-offload ${gro:-unknown}: every datagram is its own receive" \
                "ethtool -K $interface gro on"
        fi
        if [ "$gso" = "on" ]; then
            ok "$interface gso" "generic-segmentation-offload on; NIC UDP segmentation: ${udp_segmentation:-unknown}"
        else
            warn "$interface gso" "generic-segmentation-offload ${gso:-unknown}: UDP_SEGMENT sends are split early, costing CPU" \
                "ethtool -K $interface gso on"
        fi
        unset -f feature
    done
fi

if [ "$warnings" -eq 0 ]; then
    echo "tuning/check.sh: all OK"
    exit 0
fi
echo "tuning/check.sh: $warnings warning(s); see tuning/README.md"
exit 1
