// SPDX-License-Identifier: Apache-2.0
//
// The XDP program of the AF_XDP port (lb-dpdk/src/afxdp.rs): it takes from the kernel only the
// frames the data path owns and redirects them to the AF_XDP socket of their rx queue; every
// other frame goes on to the kernel (ARP, ND, BGP, SSH, health probes, the node's own traffic).
//
// Rules (the same as the AF_PACKET port's user-space filter, afpacket.rs):
// - Ethernet, then at most two VLAN tags (802.1Q 0x8100, 802.1ad 0x88a8, 0x9100), which are
//   skipped: a tagged frame is judged by what it carries and redirected with its tags (the data
//   path reads two tags). A frame with a third tag is passed.
// - ND (ICMPv6 types 133-137) is always passed, in every mode: the kernel answers for the node.
// - Mode fabric (0): IPv4/IPv6 to an owned address (a VIP) is redirected, whatever it carries;
//   UDP to port 4789 (VxLAN) to a tunnel endpoint is redirected (an IPv4 first fragment or an
//   unfragmented packet; IPv6 after at most four extension headers); the rest is passed.
// - Mode backend (1): every IPv4/IPv6 frame is redirected except those to a pass-through
//   address and those sent to an Ethernet group address (broadcast, multicast: DHCP, MLD,
//   mDNS are the kernel's, never a flow of the data path).
//
// Redirection is bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS): a queue with no socket in
// the map falls back to the kernel instead of dropping (a worker not started yet, or stopped).
//
// The program includes only the kernel's UAPI headers (linux-libc-dev) and defines the few
// libbpf macros it uses itself, so that building it needs clang and nothing else.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define be16(x) ((__u16)__builtin_bswap16(x))
#else
#define be16(x) ((__u16)(x))
#endif

#define VXLAN_PORT 4789
#define ETH_P_8021AD_ 0x88a8
#define ETH_P_QINQ_LEGACY 0x9100
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
#define NEXTHDR_ICMPV6 58
#define ND_FIRST 133 // router solicitation
#define ND_LAST 137  // redirect

// The map sizes are read by afxdp.rs (it refuses an Ownership that does not fit): keep in step.
#define MAX_QUEUES 256
#define MAX_OWNED 16384
#define MAX_TUNNEL 256
#define MAX_PASS 1024

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

struct in6_key {
	__u8 a[16];
};

// An AF_XDP socket per rx queue, at the queue's index.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Owned addresses (keys in network byte order): every frame to them is redirected.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_OWNED);
	__type(key, __u32);
	__type(value, __u8);
} owned4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_OWNED);
	__type(key, struct in6_key);
	__type(value, __u8);
} owned6 SEC(".maps");

// Tunnel endpoints: VxLAN (UDP 4789) to them is redirected.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TUNNEL);
	__type(key, __u32);
	__type(value, __u8);
} tunnel4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TUNNEL);
	__type(key, struct in6_key);
	__type(value, __u8);
} tunnel6 SEC(".maps");

// Pass-through addresses of a backend side: frames to them stay with the kernel.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PASS);
	__type(key, __u32);
	__type(value, __u8);
} pass4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PASS);
	__type(key, struct in6_key);
	__type(value, __u8);
} pass6 SEC(".maps");

// Entry 0: the interface's mode (0 fabric, 1 backend side).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} mode SEC(".maps");

// Frames redirected, passed (not owned), and owned but passed because their queue had no socket.
enum { CNT_REDIRECTED, CNT_PASSED, CNT_NO_SOCKET, CNT_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline int pass(void)
{
	count(CNT_PASSED);
	return XDP_PASS;
}

static __always_inline int redirect(struct xdp_md *ctx)
{
	long r = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	count(r == XDP_REDIRECT ? CNT_REDIRECTED : CNT_NO_SOCKET);
	return r;
}

static __always_inline int is_vlan(__u16 proto)
{
	return proto == be16(ETH_P_8021Q) || proto == be16(ETH_P_8021AD_) || proto == be16(ETH_P_QINQ_LEGACY);
}

SEC("xdp")
int lb_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return pass();
	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (!is_vlan(proto))
			break;
		struct vlan_tag *t = l3;
		if ((void *)(t + 1) > end)
			return pass();
		proto = t->proto;
		l3 = t + 1;
	}
	if (is_vlan(proto))
		return pass();

	__u32 zero = 0;
	__u32 *m = bpf_map_lookup_elem(&mode, &zero);
	int backend = m && *m == 1;
	int group = eth->h_dest[0] & 1;

	if (proto == be16(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return pass();
		__u32 dst = ip->daddr;
		if (backend) {
			if (group || bpf_map_lookup_elem(&pass4, &dst))
				return pass();
			return redirect(ctx);
		}
		if (bpf_map_lookup_elem(&owned4, &dst))
			return redirect(ctx);
		// Only an unfragmented packet or a first fragment has the UDP header.
		if (ip->protocol != IPPROTO_UDP || (ip->frag_off & be16(0x1fff)))
			return pass();
		struct udphdr *udp = (void *)ip + ip->ihl * 4;
		if ((void *)(udp + 1) > end)
			return pass();
		if (udp->dest == be16(VXLAN_PORT) && bpf_map_lookup_elem(&tunnel4, &dst))
			return redirect(ctx);
		return pass();
	}

	if (proto == be16(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return pass();
		__u8 nh = ip6->nexthdr;
		__u8 *l4 = (void *)(ip6 + 1);
		int later_fragment = 0;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST) {
				if ((void *)(l4 + 2) > end)
					return pass();
				__u8 next = l4[0];
				l4 += (l4[1] + 1) * 8;
				nh = next;
			} else if (nh == NEXTHDR_FRAGMENT) {
				if ((void *)(l4 + 8) > end)
					return pass();
				nh = l4[0];
				// The fragment offset, in the top 13 bits of bytes 2-3.
				later_fragment = (l4[2] << 5 | l4[3] >> 3) != 0;
				l4 += 8;
			} else {
				break;
			}
		}
		if (nh == NEXTHDR_ICMPV6 && !later_fragment) {
			if ((void *)(l4 + 1) > end)
				return pass();
			if (l4[0] >= ND_FIRST && l4[0] <= ND_LAST)
				return pass();
		}
		struct in6_key k;
		__builtin_memcpy(k.a, &ip6->daddr, 16);
		if (backend) {
			if (group || bpf_map_lookup_elem(&pass6, &k))
				return pass();
			return redirect(ctx);
		}
		if (bpf_map_lookup_elem(&owned6, &k))
			return redirect(ctx);
		if (nh != IPPROTO_UDP || later_fragment)
			return pass();
		struct udphdr *udp = (void *)l4;
		if ((void *)(udp + 1) > end)
			return pass();
		if (udp->dest == be16(VXLAN_PORT) && bpf_map_lookup_elem(&tunnel6, &k))
			return redirect(ctx);
		return pass();
	}
	return pass();
}

// No GPL-only helper is used, so the licence string is the project's own.
char _license[] SEC("license") = "Apache-2.0";
