// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * runnel_filter: Runnel's XDP early-rejection filter.
 *
 * Decides, from the 88-byte datagram header alone (docs/protocol.md §2), whether a UDP packet
 * to one of the node's ports deserves userspace work, before the kernel allocates an skb. The
 * rules, their order, the map layouts, the GCRA and the replay window are specified in
 * docs/xdp-filter.md; this file implements that document and nothing else. The userspace
 * filter (dataplane/src/filter.rs) applies the same rules in the same order, and the replay
 * window below is dataplane/src/relay/replay.rs transcribed, so both filters agree on every
 * input.
 *
 * Every packet gets exactly one verdict (enum verdict, ids shared with runnel_ebpf::Verdict)
 * and each verdict is counted in the per-CPU array `verdicts`.
 *
 * Minimum kernel version: 5.12.
 *   - BPF atomics with fetch, compare-and-exchange and exchange (the replay window lock, the
 *     GCRA's atomic add): 5.12. This is the binding requirement.
 *   - ALU32/JMP32 instructions (clang -mcpu=v3): 5.1.
 *   - bounded loops (SipHash rounds and the window clearing may stay loops): 5.3.
 *   - LRU hash maps 4.10, per-CPU arrays 4.6, XDP 4.8, BPF_PROG_TEST_RUN for XDP 4.12,
 *     bpf_link-based XDP attachment 5.9 (the loader falls back to netlink before that).
 *
 * Limits:
 *   - Only the packet's linear part is visible (no xdp.frags): the program is for MTUs
 *     whose frames fit one buffer, which is every Runnel datagram up to jumbo frames on
 *     drivers that keep them linear.
 *   - IPv4 non-first fragments and IPv6 packets with extension headers are passed unfiltered
 *     (no UDP header to read); the userspace filter still sees them after reassembly.
 *   - The replay window map is an LRU: a flood of authenticated datagrams from many spoofed
 *     source addresses (possible only for a holder of a link key) can evict an honest
 *     sender's window, after which its recent sequences are accepted once more.
 *     bpf_spin_lock would be the natural lock for its value, but the kernel refuses spin
 *     locks in LRU hash values (map creation fails with EOPNOTSUPP, checked on 6.18), so
 *     the value's first word is a small try-lock taken with compare-and-exchange (see
 *     replay_window_lock below).
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Datagram header fields are little-endian and read in place, so the program is built for a
 * little-endian BPF target only (x86-64 and arm64 hosts, clang's default for -target bpf). */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "runnel_filter reads little-endian header fields in place");

/* ---- Constants from docs/protocol.md §2 ---------------------------------------------------- */

#define HEADER_LENGTH 88
#define TAGGED_HEADER_LENGTH 80
#define OFFSET_MAGIC 0
#define OFFSET_VERSION 2
#define OFFSET_KIND 3
#define OFFSET_LINK_ID 4
#define OFFSET_LINK_SEQ 8
#define OFFSET_STREAM_PART_KEY 16
#define OFFSET_FLAGS 48
#define OFFSET_TOTAL_LENGTH 52
#define OFFSET_RESERVED 54
#define OFFSET_PUBLISHER 60
#define OFFSET_LINK_TAG 80

#define MAGIC_0 0x52 /* 'R' */
#define MAGIC_1 0x4e /* 'N' */
#define PROTOCOL_VERSION 2

#define KIND_DATA 1
/* 2 was v1's Fragment: a message larger than a frame now spans frames. */
#define KIND_RETIRED 2
#define KIND_NAK 3
/* 4 is Subscribe, 5 Unsubscribe, 6 Credit (a window grant): all bodiless or fixed-size. */
/* Plumtree's lazy push: an IHave announces frame ids (a NAK's ranges), a Prune is bodiless. */
#define KIND_IHAVE 7
#define KIND_PRUNE 8
#define KIND_LAST 8

#define FLAG_SINGLE_PUBLISHER 0x0001
#define FLAGS_KNOWN 0x0003

#define ROLE_NEIGHBOR 0
#define ROLE_CLIENT 1

#define REPLAY_WINDOW 1024
#define REPLAY_WORDS (REPLAY_WINDOW / 64)

/* How many compare-and-exchange attempts a replay window lock gets before the datagram is
 * dropped as replayed. The lock is held for a few dozen instructions, by code that runs with
 * bottom halves off on real traffic (NAPI, generic XDP), and one flow normally lands on one
 * CPU, so contention is rare and short; the bound keeps the verifier's loop finite and a
 * holder that was preempted (possible only in preemptible BPF_PROG_TEST_RUN calls) from
 * stalling anyone. */
#define REPLAY_LOCK_ATTEMPTS 64

#define IPV4_FRAGMENT_OFFSET_MASK 0x1fff
#define IPV4_MORE_FRAGMENTS 0x2000

/* Stable ids: docs/xdp-filter.md "Verdicts", runnel_ebpf::Verdict, the `verdicts` index. */
enum verdict {
    VERDICT_PASS = 0,
    VERDICT_NOT_RUNNEL = 1,
    VERDICT_MALFORMED = 2,
    VERDICT_UNKNOWN_LINK = 3,
    VERDICT_BAD_TAG = 4,
    VERDICT_QUARANTINED_LINK = 5,
    VERDICT_REPLAYED = 6,
    VERDICT_QUARANTINED_PUBLISHER = 7,
    VERDICT_NOT_JOINED = 8,
    VERDICT_NOT_PERMITTED = 9,
    VERDICT_RATE_LIMITED = 10,
    VERDICT_COUNT = 11,
};

/* ---- Map layouts (docs/xdp-filter.md "Maps"; mirrored by #[repr(C)] types in lib.rs) ------- */

struct link_entry {
    __u64 key0; /* link key bytes 0..8, little-endian: SipHash k0 */
    __u64 key1; /* link key bytes 8..16, little-endian: SipHash k1 */
    __u64 emission_interval_ns; /* GCRA T; 0 = unlimited */
    __u64 burst_tolerance_ns; /* GCRA tau = (burst - 1) * T */
    __u64 tat_ns; /* GCRA theoretical arrival time, advanced atomically here */
    __u32 role; /* ROLE_NEIGHBOR or ROLE_CLIENT */
    __u32 pad;
};
_Static_assert(sizeof(struct link_entry) == 48, "link_entry layout is shared with lib.rs");

struct replay_key {
    __u32 link_id;
    __u16 port; /* source port, host order */
    __u8 family; /* 4 or 6 */
    __u8 pad;
    __u8 addr[16]; /* source address; IPv4 in the first 4 bytes, the rest zero */
};
_Static_assert(sizeof(struct replay_key) == 24, "replay_key layout is shared with lib.rs");

struct replay_window {
    __u32 lock; /* 0 free, 1 held: stands where the spec's bpf_spin_lock would (same size) */
    __u32 pad;
    __u64 top; /* highest accepted sequence + 1; 0 = nothing accepted yet */
    __u64 bits[REPLAY_WORDS]; /* ring bitmap indexed by sequence % REPLAY_WINDOW */
};
_Static_assert(sizeof(struct replay_window) == 144, "replay_window layout is shared with lib.rs");

struct publisher_address {
    __u8 bytes[20];
};

struct stream_part_key {
    __u8 bytes[32];
};

struct permission_key {
    __u8 part[32];
    __u8 publisher[20];
};
_Static_assert(sizeof(struct permission_key) == 52, "permission_key layout is shared with lib.rs");

/* Maps written from userspace are not preallocated: a node with a handful of links and
 * stream parts should not pin tens of MiB of kernel memory for the maximum sizes. The
 * replay map is written here on the fast path and must be an LRU, which is always
 * preallocated. */

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u16);
    __type(value, __u8);
} ports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u32);
    __type(value, struct link_entry);
} links SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct replay_key);
    __type(value, struct replay_window);
} replay SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u32);
    __type(value, __u64);
} quarantined_links SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct publisher_address);
    __type(value, __u64);
} quarantined_publishers SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct stream_part_key);
    __type(value, __u8);
} joined SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct stream_part_key);
    __type(value, __u8);
} restricted SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 262144);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct permission_key);
    __type(value, __u64);
} permissions SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, VERDICT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} verdicts SEC(".maps");

/* ---- Little helpers -------------------------------------------------------------------- */

/* Packet loads at any offset: header fields are unaligned (the header starts 42 bytes into
 * an untagged IPv4 frame). The verifier permits unaligned packet access on the hosts this
 * targets, and one wide load is what keeps SipHash cheap. */
static __always_inline __u16 load_le16(const __u8 *p) { return *(const __u16 *)p; }
static __always_inline __u32 load_le32(const __u8 *p) { return *(const __u32 *)p; }
static __always_inline __u64 load_le64(const __u8 *p) { return *(const __u64 *)p; }

static __always_inline __u64 rotl64(__u64 x, int b) { return (x << b) | (x >> (64 - b)); }

#define SIP_ROUND(v0, v1, v2, v3)                                                                  \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = rotl64(v1, 13);                                                                       \
        v1 ^= v0;                                                                                  \
        v0 = rotl64(v0, 32);                                                                       \
        v2 += v3;                                                                                  \
        v3 = rotl64(v3, 16);                                                                       \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = rotl64(v3, 21);                                                                       \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = rotl64(v1, 17);                                                                       \
        v1 ^= v2;                                                                                  \
        v2 = rotl64(v2, 32);                                                                       \
    } while (0)

/* SipHash-2-4 (reference, 64-bit output) over exactly the 80 tagged header bytes: ten
 * little-endian words and then the final block, which holds only the length (80 << 56)
 * because 80 is a multiple of 8. A fixed message length is what makes this a loop the
 * verifier accepts without any data-dependent bound. */
static __always_inline __u64 link_tag(const __u8 *header, __u64 k0, __u64 k1)
{
    __u64 v0 = k0 ^ 0x736f6d6570736575ULL;
    __u64 v1 = k1 ^ 0x646f72616e646f6dULL;
    __u64 v2 = k0 ^ 0x6c7967656e657261ULL;
    __u64 v3 = k1 ^ 0x7465646279746573ULL;

#pragma clang loop unroll(full)
    for (int word = 0; word < TAGGED_HEADER_LENGTH / 8; word++) {
        __u64 m = load_le64(header + word * 8);
        v3 ^= m;
        SIP_ROUND(v0, v1, v2, v3);
        SIP_ROUND(v0, v1, v2, v3);
        v0 ^= m;
    }

    __u64 last = (__u64)TAGGED_HEADER_LENGTH << 56;
    v3 ^= last;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    v0 ^= last;

    v2 ^= 0xff;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- Replay window (dataplane/src/relay/replay.rs, transcribed) ------------------------- */

/* The value cannot hold a bpf_spin_lock (LRU map, see the file header), so it holds a
 * try-lock: compare-and-exchange 0 -> 1 to take it, exchange back to 0 to release it. Both
 * are full barriers as the x86-64 and arm64 JITs emit them, so the window's words are
 * published before the lock is seen free. Returns 0 when the lock stayed busy for every
 * attempt. */
static __always_inline int replay_window_lock(struct replay_window *window)
{
    for (int attempt = 0; attempt < REPLAY_LOCK_ATTEMPTS; attempt++) {
        if (__sync_val_compare_and_swap(&window->lock, 0, 1) == 0)
            return 1;
    }
    return 0;
}

static __always_inline void replay_window_unlock(struct replay_window *window)
{
    __sync_lock_test_and_set(&window->lock, 0);
}

/* Clears ring slots for the sequences from..to (to exclusive, to - from < REPLAY_WINDOW),
 * one word-sized run at a time instead of one bit at a time: the same result as replay.rs's
 * per-sequence loop in at most 17 steps (a partial word, up to 15 whole words, a partial
 * word). */
static __always_inline void replay_window_clear(struct replay_window *window, __u64 from, __u64 to)
{
    for (int step = 0; step < REPLAY_WORDS + 1 && from < to; step++) {
        __u32 slot = from % REPLAY_WINDOW;
        __u32 bit = slot % 64;
        __u64 remaining = to - from;
        __u32 count = 64 - bit;
        if (remaining < count)
            count = remaining;
        __u64 run = count == 64 ? ~0ULL : ((1ULL << count) - 1);
        window->bits[(slot / 64) & (REPLAY_WORDS - 1)] &= ~(run << bit);
        from += count;
    }
}

/* Accepts `sequence` once within the window below the highest seen and records it; the
 * caller holds the window's lock. Same branches, same order as ReplayWindow::accept. */
static __always_inline int replay_window_accept(struct replay_window *window, __u64 sequence)
{
    /* sequence + 1 would wrap to the "empty" top. */
    if (sequence == ~0ULL)
        return 0;
    __u64 slot = sequence % REPLAY_WINDOW;
    __u32 word = (slot / 64) & (REPLAY_WORDS - 1);
    __u64 bit = 1ULL << (slot % 64);
    __u64 next = sequence + 1;
    __u64 top = window->top;
    if (next > top) {
        /* A new highest sequence: slots between the old and the new top now stand for
         * sequences not seen yet; a jump of a whole window or more invalidates them all. */
        if (next - top >= REPLAY_WINDOW) {
#pragma clang loop unroll(full)
            for (int i = 0; i < REPLAY_WORDS; i++)
                window->bits[i] = 0;
        } else {
            replay_window_clear(window, top, next);
        }
        window->top = next;
        window->bits[word] |= bit;
        return 1;
    }
    /* Older than the window: its slot has been reused, so "not seen" cannot be told. */
    if (top - sequence > REPLAY_WINDOW)
        return 0;
    if (window->bits[word] & bit)
        return 0;
    window->bits[word] |= bit;
    return 1;
}

/* ---- Rate limit -------------------------------------------------------------------------- */

/* GCRA (docs/xdp-filter.md "Rate limit"): tat = max(tat, now); over the rate when
 * tat - now > tau (tat unchanged), else tat += T. No lock on the fast path: an idle link's
 * schedule restarts with one compare-and-exchange, a busy one advances with an atomic add.
 * CPUs racing on one link may admit a datagram or two beyond the burst. */
static __always_inline int rate_limit_admits(struct link_entry *link, __u64 now)
{
    __u64 interval = link->emission_interval_ns;
    if (interval == 0)
        return 1; /* unlimited */
    __u64 tolerance = link->burst_tolerance_ns;
    __u64 tat = *(volatile __u64 *)&link->tat_ns;
    if (tat < now) {
        if (__sync_val_compare_and_swap(&link->tat_ns, tat, now + interval) == tat)
            return 1;
        /* Another CPU moved the schedule first: decide against what it wrote. */
        tat = *(volatile __u64 *)&link->tat_ns;
        if (tat < now)
            tat = now;
    }
    if (tat - now > tolerance)
        return 0;
    __sync_fetch_and_add(&link->tat_ns, interval);
    return 1;
}

/* ---- The rules ---------------------------------------------------------------------------- */

static __always_inline enum verdict classify(struct xdp_md *ctx)
{
    const __u8 *data = (const __u8 *)(long)ctx->data;
    const __u8 *data_end = (const __u8 *)(long)ctx->data_end;

    /* Link layer: Ethernet with at most one 802.1Q tag. Anything else is not ours to judge. */
    const struct ethhdr *eth = (const void *)data;
    if ((const __u8 *)(eth + 1) > data_end)
        return VERDICT_NOT_RUNNEL;
    __u16 ether_type = eth->h_proto;
    const __u8 *network = (const __u8 *)(eth + 1);
    if (ether_type == bpf_htons(ETH_P_8021Q)) {
        /* The tag is TCI (2 bytes) then the encapsulated EtherType (2 bytes). */
        if (network + 4 > data_end)
            return VERDICT_NOT_RUNNEL;
        ether_type = *(const __u16 *)(network + 2);
        network += 4;
    }

    struct replay_key replay_key;
    __builtin_memset(&replay_key, 0, sizeof(replay_key));
    const struct udphdr *udp;
    int first_fragment = 0;

    if (ether_type == bpf_htons(ETH_P_IP)) {
        const struct iphdr *ip = (const void *)network;
        if ((const __u8 *)(ip + 1) > data_end)
            return VERDICT_NOT_RUNNEL;
        /* A header the kernel itself would drop is left to the kernel. */
        if (ip->version != 4 || ip->ihl < 5)
            return VERDICT_NOT_RUNNEL;
        if (ip->protocol != IPPROTO_UDP)
            return VERDICT_NOT_RUNNEL;
        __u16 fragment = bpf_ntohs(ip->frag_off);
        /* A non-first fragment carries no UDP header: nothing to match, the kernel
         * reassembles it and the userspace filter judges the whole datagram. */
        if (fragment & IPV4_FRAGMENT_OFFSET_MASK)
            return VERDICT_NOT_RUNNEL;
        first_fragment = (fragment & IPV4_MORE_FRAGMENTS) != 0;
        udp = (const void *)(network + ip->ihl * 4);
        replay_key.family = 4;
        __builtin_memcpy(replay_key.addr, &ip->saddr, 4);
    } else if (ether_type == bpf_htons(ETH_P_IPV6)) {
        const struct ipv6hdr *ip6 = (const void *)network;
        if ((const __u8 *)(ip6 + 1) > data_end)
            return VERDICT_NOT_RUNNEL;
        /* Walking extension headers costs a loop per header for traffic Runnel never
         * sends: UDP must follow the fixed header directly. */
        if (ip6->nexthdr != IPPROTO_UDP)
            return VERDICT_NOT_RUNNEL;
        udp = (const void *)(ip6 + 1);
        replay_key.family = 6;
        __builtin_memcpy(replay_key.addr, &ip6->saddr, 16);
    } else {
        return VERDICT_NOT_RUNNEL;
    }

    if ((const __u8 *)(udp + 1) > data_end)
        return VERDICT_NOT_RUNNEL;
    __u16 port = bpf_ntohs(udp->dest);
    if (!bpf_map_lookup_elem(&ports, &port))
        return VERDICT_NOT_RUNNEL;
    replay_key.port = bpf_ntohs(udp->source);

    /* From here on the packet is addressed to the node: anything that is not a well-formed
     * Runnel header is dropped as malformed. */

    /* Runnel sends datagrams that fit the path MTU; a fragmented one is either
     * misconfiguration or an attempt to slip a header past this filter in pieces. */
    if (first_fragment)
        return VERDICT_MALFORMED;

    /* The UDP length decides where the datagram ends (Ethernet may pad short frames). It
     * must cover the whole header and may not claim bytes the packet does not have. */
    __u16 udp_length = bpf_ntohs(udp->len);
    if (udp_length < sizeof(struct udphdr) + HEADER_LENGTH)
        return VERDICT_MALFORMED;
    if ((const __u8 *)udp + udp_length > data_end)
        return VERDICT_MALFORMED;
    const __u8 *header = (const __u8 *)(udp + 1);
    if (header + HEADER_LENGTH > data_end) /* implied by the two checks above; for the verifier */
        return VERDICT_MALFORMED;
    __u16 payload_length = udp_length - sizeof(struct udphdr);

    /* Fixed header fields (protocol.md §2): anything unknown is rejected so that a later
     * version can give it a meaning. */
    if (header[OFFSET_MAGIC] != MAGIC_0 || header[OFFSET_MAGIC + 1] != MAGIC_1)
        return VERDICT_MALFORMED;
    if (header[OFFSET_VERSION] != PROTOCOL_VERSION)
        return VERDICT_MALFORMED;
    __u8 kind = header[OFFSET_KIND];
    if (kind < KIND_DATA || kind > KIND_LAST || kind == KIND_RETIRED)
        return VERDICT_MALFORMED;
    __u16 flags = load_le16(header + OFFSET_FLAGS);
    if (flags & ~FLAGS_KNOWN)
        return VERDICT_MALFORMED;
    if (load_le32(header + OFFSET_RESERVED) != 0 || load_le16(header + OFFSET_RESERVED + 4) != 0)
        return VERDICT_MALFORMED;
    /* One datagram per UDP packet: GSO pads every datagram to its segment, so a length that
     * differs from the payload means a GRO split would go wrong in userspace. */
    if (load_le16(header + OFFSET_TOTAL_LENGTH) != payload_length)
        return VERDICT_MALFORMED;

    /* The link must be one the node holds a key for. */
    __u32 link_id = load_le32(header + OFFSET_LINK_ID);
    struct link_entry *link = bpf_map_lookup_elem(&links, &link_id);
    if (!link)
        return VERDICT_UNKNOWN_LINK;

    /* The tag proves the header came from a holder of the link key; everything below trusts
     * the header's fields, so this comes first. */
    if (link_tag(header, link->key0, link->key1) != load_le64(header + OFFSET_LINK_TAG))
        return VERDICT_BAD_TAG;

    /* The clock is read only when a rule needs it: bpf_ktime_get_ns costs ~50 ns on a VM's
     * clocksource, a third of a dropped replay's cost. */
    __u64 now = 0;
#define NOW() (now ? now : (now = bpf_ktime_get_ns()))

    /* A link that delivered a bad publisher signature is cut off until its expiry. */
    __u64 *link_expiry = bpf_map_lookup_elem(&quarantined_links, &link_id);
    if (link_expiry && *link_expiry > NOW())
        return VERDICT_QUARANTINED_LINK;

    /* A quarantined publisher is refused here only when the header names it as the single
     * publisher of every record; mixed datagrams are judged record by record in userspace.
     * Before the replay window: a hash probe is cheaper than the window's lookup and lock,
     * and a dropped datagram need not use up its sequence. */
    int single_publisher = (flags & FLAG_SINGLE_PUBLISHER) != 0;
    const __u8 *publisher = header + OFFSET_PUBLISHER;
    if (single_publisher) {
        __u64 *publisher_expiry = bpf_map_lookup_elem(&quarantined_publishers, publisher);
        if (publisher_expiry && *publisher_expiry > NOW())
            return VERDICT_QUARANTINED_PUBLISHER;
    }

    /* Replay window per (link, source address, source port). The tag is checked first, so
     * only holders of a link key create windows. A missing window is created empty, then
     * looked up again (another CPU may have created it meanwhile: either copy is fine). */
    replay_key.link_id = link_id;
    struct replay_window *window = bpf_map_lookup_elem(&replay, &replay_key);
    if (!window) {
        struct replay_window empty;
        __builtin_memset(&empty, 0, sizeof(empty));
        bpf_map_update_elem(&replay, &replay_key, &empty, BPF_NOEXIST);
        window = bpf_map_lookup_elem(&replay, &replay_key);
        /* No window to record the sequence in: refusing is the safe answer. */
        if (!window)
            return VERDICT_REPLAYED;
    }
    /* A lock that stays busy is refused too: the sender's repair (NAK) recovers a datagram,
     * nothing recovers an accepted replay. */
    if (!replay_window_lock(window))
        return VERDICT_REPLAYED;
    int fresh = replay_window_accept(window, load_le64(header + OFFSET_LINK_SEQ));
    replay_window_unlock(window);
    if (!fresh)
        return VERDICT_REPLAYED;

    /* Frames, NAKs, IHaves and Prunes for a stream part the node is not in are work for
     * nobody. A client publishing to a new stream part is what makes the node join it, so
     * only neighbors' Data is held to this; the others from anyone are. */
    const __u8 *part = header + OFFSET_STREAM_PART_KEY;
    if ((kind == KIND_DATA && link->role == ROLE_NEIGHBOR) || kind == KIND_NAK || kind == KIND_IHAVE || kind == KIND_PRUNE) {
        if (!bpf_map_lookup_elem(&joined, part))
            return VERDICT_NOT_JOINED;
    }

    /* Publish permission for restricted stream parts, once per datagram when the header
     * names a single publisher (the common case). An expiry at or before now is no
     * permission. */
    if (kind == KIND_DATA && single_publisher && bpf_map_lookup_elem(&restricted, part)) {
        struct permission_key permission_key;
        __builtin_memcpy(permission_key.part, part, sizeof(permission_key.part));
        __builtin_memcpy(permission_key.publisher, publisher, sizeof(permission_key.publisher));
        __u64 *permission_expiry = bpf_map_lookup_elem(&permissions, &permission_key);
        if (!permission_expiry || *permission_expiry <= NOW())
            return VERDICT_NOT_PERMITTED;
    }

    /* Metering last: only datagrams that would otherwise be accepted spend the link's rate. */
    if (link->emission_interval_ns != 0 && !rate_limit_admits(link, NOW()))
        return VERDICT_RATE_LIMITED;

    return VERDICT_PASS;
#undef NOW
}

SEC("xdp")
int runnel_filter(struct xdp_md *ctx)
{
    enum verdict verdict = classify(ctx);
    __u32 index = verdict;
    __u64 *count = bpf_map_lookup_elem(&verdicts, &index);
    /* A per-CPU slot, and on real traffic nothing else runs on this CPU mid-increment
     * (bottom halves are off), so a plain increment is exact without a locked instruction.
     * Only concurrent BPF_PROG_TEST_RUN calls, which are preemptible, could lose a count. */
    if (count)
        *count += 1;
    return verdict == VERDICT_PASS || verdict == VERDICT_NOT_RUNNEL ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
