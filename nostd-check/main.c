/*
 * nostd-check: calls lb-core, built as a #![no_std] Rust staticlib, from C.
 *
 * Feeds hand-written frames (an 802.1Q-tagged IPv4 TCP SYN, an IPv6 UDP datagram, a truncated frame
 * and an ARP frame) to nostd_flow_key() and checks every field it returns; then VxLAN-encapsulates
 * the SYN in place with nostd_vxlan_encap(), checks the outer headers byte by byte, decapsulates it
 * with nostd_vxlan_decap() and parses the inner frame again. Exits 0 when every check passes.
 *
 * Built and run by scripts/test.sh: gcc -Wall -Wextra -Werror main.c libnostd_check.a
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Mirrors `NostdKey` in src/lib.rs (repr(C), no implicit padding). */
struct nostd_key {
    uint8_t src_addr[16];
    uint8_t dst_addr[16];
    uint16_t src_port;
    uint16_t dst_port;
    uint8_t protocol;
    uint8_t ip_version;
    uint8_t tcp_flags;
    uint8_t fragment;
    uint8_t vlan_count;
    uint8_t reserved;
    uint16_t vlans[2];
    uint16_t l3_offset;
    uint16_t l4_offset;
    uint16_t l4_len;
    uint32_t frag_ident;
};
_Static_assert(sizeof(struct nostd_key) == 56, "struct nostd_key layout");

/* Mirrors `NostdTunnel` in src/lib.rs. */
struct nostd_tunnel {
    uint8_t src_mac[6];
    uint8_t dst_mac[6];
    uint8_t src_ip[4];
    uint8_t dst_ip[4];
    uint32_t vni;
    uint16_t mtu;
    uint8_t ttl;
    uint8_t reserved;
};
_Static_assert(sizeof(struct nostd_tunnel) == 28, "struct nostd_tunnel layout");

int32_t nostd_flow_key(const uint8_t *frame, size_t len, struct nostd_key *out);
int64_t nostd_vxlan_encap(const struct nostd_tunnel *tunnel, uint8_t *buf, size_t buf_len, size_t frame_start,
                          size_t frame_len, uint32_t flow_hash);
int32_t nostd_vxlan_decap(const uint8_t *frame, size_t len, uint32_t *vni, size_t *inner_offset);

static int failures = 0;

#define CHECK(cond)                                                                                  \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "nostd-check: FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
            failures++;                                                                              \
        }                                                                                            \
    } while (0)

/* 802.1Q (VLAN 10) IPv4 TCP SYN from 1.2.3.4:50000 to 20.50.60.10:80, 6 bytes of Ethernet padding. */
static const uint8_t SYN[64] = {
    /* Ethernet: dst, src, 802.1Q TPID, TCI (vid 10), EtherType IPv4 */
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00, 0x00, 0x0a, 0x08, 0x00,
    /* IPv4: 45, tos, total 40, ident 0x1234, DF, ttl 64, proto 6, csum, src, dst */
    0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 1, 2, 3, 4, 20, 50, 60, 10,
    /* TCP: sport 50000, dport 80, seq 1000, ack 0, doff 5, SYN, window 65535, csum, urg */
    0xc3, 0x50, 0x00, 0x50, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xff, 0xff, 0x00, 0x00,
    0x00, 0x00,
    /* padding */
    0, 0, 0, 0, 0, 0,
};

/* IPv6 UDP from 2001:db8::1:5353 to 2001:db8::2:53 with 4 payload bytes, untagged. */
static const uint8_t UDP6[14 + 40 + 8 + 4] = {
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd,
    /* IPv6: version 6, payload length 12, next header UDP, hop limit 64 */
    0x60, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x11, 0x40,
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
    /* UDP: sport 5353, dport 53, length 12, checksum 0 */
    0x14, 0xe9, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00,
    0xde, 0xad, 0xbe, 0xef,
};

static void check_syn_key(const struct nostd_key *k, uint16_t l3_offset, uint16_t vlan_count) {
    static const uint8_t src[16] = {1, 2, 3, 4};
    static const uint8_t dst[16] = {20, 50, 60, 10};
    CHECK(memcmp(k->src_addr, src, 16) == 0);
    CHECK(memcmp(k->dst_addr, dst, 16) == 0);
    CHECK(k->src_port == 50000);
    CHECK(k->dst_port == 80);
    CHECK(k->protocol == 6);
    CHECK(k->ip_version == 4);
    CHECK(k->tcp_flags == 0x02);
    CHECK(k->fragment == 0);
    CHECK(k->vlan_count == vlan_count);
    CHECK(k->l3_offset == l3_offset);
    CHECK(k->l4_offset == l3_offset + 20);
    CHECK(k->l4_len == 20);
}

int main(void) {
    struct nostd_key k;

    /* 1. IPv4 TCP SYN behind a VLAN tag. */
    memset(&k, 0xaa, sizeof k);
    CHECK(nostd_flow_key(SYN, sizeof SYN, &k) == 0);
    check_syn_key(&k, 18, 1);
    CHECK(k.vlans[0] == 10);

    /* 2. IPv6 UDP. */
    memset(&k, 0xaa, sizeof k);
    CHECK(nostd_flow_key(UDP6, sizeof UDP6, &k) == 0);
    CHECK(k.ip_version == 6 && k.protocol == 17);
    CHECK(k.src_port == 5353 && k.dst_port == 53);
    CHECK(k.src_addr[0] == 0x20 && k.src_addr[15] == 0x01 && k.dst_addr[15] == 0x02);
    CHECK(k.vlan_count == 0 && k.l3_offset == 14 && k.l4_offset == 54 && k.l4_len == 12);

    /* 3. Errors come back as negative codes, never as a crash. */
    for (size_t len = 0; len < 58; len++) {
        CHECK(nostd_flow_key(SYN, len, &k) < 0);
    }
    uint8_t arp[64];
    memcpy(arp, SYN, sizeof arp);
    arp[16] = 0x08;
    arp[17] = 0x06;
    CHECK(nostd_flow_key(arp, sizeof arp, &k) == -10); /* UnsupportedEtherType */
    CHECK(nostd_flow_key(NULL, 10, &k) == -1);
    CHECK(nostd_flow_key(SYN, sizeof SYN, NULL) == -1);

    /* 4. VxLAN: encapsulate the untagged SYN in place, check the outer headers, decapsulate. */
    enum { HEADROOM = 64, INNER = 14 + 20 + 20 };
    uint8_t buf[HEADROOM + INNER];
    memset(buf, 0, sizeof buf);
    memcpy(buf + HEADROOM, SYN, 12);                /* MACs */
    buf[HEADROOM + 12] = 0x08;                      /* EtherType IPv4, no tag */
    buf[HEADROOM + 13] = 0x00;
    memcpy(buf + HEADROOM + 14, SYN + 18, 40);      /* IPv4 + TCP */
    struct nostd_tunnel t = {
        .src_mac = {0x02, 0, 0, 0, 0x05, 0x0a},
        .dst_mac = {0x02, 0, 0, 0, 0x0a, 0x14},
        .src_ip = {172, 16, 5, 10},
        .dst_ip = {172, 16, 10, 20},
        .vni = 0x1234,
        .mtu = 1500,
        .ttl = 64,
    };
    int64_t start = nostd_vxlan_encap(&t, buf, sizeof buf, HEADROOM, INNER, 0xdeadbeef);
    CHECK(start == HEADROOM - 50);
    if (start >= 0) {
        const uint8_t *o = buf + start;
        CHECK(memcmp(o, t.dst_mac, 6) == 0 && memcmp(o + 6, t.src_mac, 6) == 0);
        CHECK(o[12] == 0x08 && o[13] == 0x00);                     /* outer EtherType IPv4 */
        CHECK(o[14] == 0x45 && o[23] == 17);                       /* IPv4, protocol UDP */
        CHECK(((o[16] << 8) | o[17]) == 20 + 8 + 8 + INNER);       /* outer total length */
        CHECK(memcmp(o + 26, t.src_ip, 4) == 0 && memcmp(o + 30, t.dst_ip, 4) == 0);
        CHECK(((o[34] << 8) | o[35]) == (0xc000 | (0xdeadbeef & 0x3fff))); /* entropy source port */
        CHECK(((o[36] << 8) | o[37]) == 4789);                     /* VxLAN port */
        CHECK(o[42] == 0x08 && o[46] == 0x00 && o[47] == 0x12 && o[48] == 0x34); /* flags, VNI */
        /* IPv4 header checksum verifies: ones'-complement sum of the header is 0xffff. */
        uint32_t sum = 0;
        for (int i = 14; i < 34; i += 2) sum += (uint32_t)((o[i] << 8) | o[i + 1]);
        while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
        CHECK(sum == 0xffff);

        uint32_t vni = 0;
        size_t inner_offset = 0;
        size_t outer_len = sizeof buf - (size_t)start;
        CHECK(nostd_vxlan_decap(o, outer_len, &vni, &inner_offset) == 0);
        CHECK(vni == 0x1234 && inner_offset == 50);
        memset(&k, 0xaa, sizeof k);
        CHECK(nostd_flow_key(o + inner_offset, outer_len - inner_offset, &k) == 0);
        check_syn_key(&k, 14, 0);
        /* The outer frame itself is a UDP flow to port 4789. */
        CHECK(nostd_flow_key(o, outer_len, &k) == 0);
        CHECK(k.protocol == 17 && k.dst_port == 4789);
    }
    /* Too little headroom is an error, not an overwrite. */
    CHECK(nostd_vxlan_encap(&t, buf, sizeof buf, 49, INNER, 0) == -12);
    /* A VNI above 24 bits is refused. */
    t.vni = 1u << 24;
    CHECK(nostd_vxlan_encap(&t, buf, sizeof buf, HEADROOM, INNER, 0) == -15);

    if (failures) {
        fprintf(stderr, "nostd-check: %d check(s) failed\n", failures);
        return 1;
    }
    printf("nostd-check: all checks passed (lb-core linked as a no_std staticlib)\n");
    return 0;
}
