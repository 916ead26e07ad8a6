/*
 * Helpers shared by the C tests of lb-ffi (run by lb-ffi/tests/c_abi.rs): checks that exit with a
 * message, a frame builder with real checksums, readers of the VxLAN headers the MUX writes, and the
 * node files the tests create instances from.
 */
#ifndef LBTEST_H
#define LBTEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb.h"

static unsigned lbt_checks;

#define CHECK(cond)                                                                                   \
    do {                                                                                              \
        lbt_checks++;                                                                                 \
        if (!(cond)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                  \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

#define CHECK_EQ(a, b)                                                                                \
    do {                                                                                              \
        unsigned long long lbt_a = (unsigned long long)(a), lbt_b = (unsigned long long)(b);          \
        lbt_checks++;                                                                                 \
        if (lbt_a != lbt_b) {                                                                         \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%llu != %llu)\n", __FILE__, __LINE__, #a, \
                    #b, lbt_a, lbt_b);                                                                \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

#define CHECK_STR(a, b)                                                                               \
    do {                                                                                              \
        const char *lbt_s = (a), *lbt_t = (b);                                                        \
        lbt_checks++;                                                                                 \
        if (lbt_s == NULL || strcmp(lbt_s, lbt_t) != 0) {                                             \
            fprintf(stderr, "%s:%d: CHECK_STR failed: %s == \"%s\" (got %s%s%s)\n", __FILE__, __LINE__, #a, \
                    lbt_t, lbt_s ? "\"" : "", lbt_s ? lbt_s : "NULL", lbt_s ? "\"" : "");             \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

/* Every test section ends with pass("name"): the driver checks that each name is printed. */
static inline void pass(const char *name) {
    printf("ok %s\n", name);
    fflush(stdout);
}

static inline void done(void) {
    printf("all %u checks passed\n", lbt_checks);
}

/* --- addresses of the test topology ---------------------------------------------------------- */

#define HEADROOM 128
#define BUF_SIZE 2048
#define OUTER_V4 50 /* Ethernet + IPv4 + UDP + VxLAN */

static const uint8_t MUX_MAC[6] = {0x02, 0, 0, 0, 0x05, 0x0a};
static const uint8_t GW_MAC[6] = {0x02, 0, 0, 0, 0, 0x01};
static const uint8_t CLIENT_MAC[6] = {0x02, 0, 0, 0, 0x0c, 0x01};
static const uint8_t MUX_IP[4] = {172, 16, 5, 10};
static const uint8_t VIP[4] = {20, 50, 60, 10};
static const uint8_t NOT_A_VIP[4] = {20, 50, 60, 99};
static const uint8_t CLIENT[4] = {198, 18, 0, 7};

/* The load balancer: one VIP, TCP 80 -> 8080 over three backends on three hosts (VNI 5001). */
#define LB_JSON                                                                                                   \
    "{\"name\":\"CLB\",\"properties\":{"                                                                          \
    "\"frontendIPConfigurations\":[{\"name\":\"Web\",\"properties\":{\"publicIPAddress\":{\"ipAddress\":"       \
    "\"20.50.60.10\"}}}],"                                                                                        \
    "\"backendAddressPools\":[{\"name\":\"Web\",\"properties\":{\"vni\":5001,\"loadBalancerBackendAddresses\":[" \
    "{\"name\":\"web0\",\"properties\":{\"ipAddress\":\"10.0.1.4\",\"hostAddress\":\"172.16.10.20\"}},"         \
    "{\"name\":\"web1\",\"properties\":{\"ipAddress\":\"10.0.1.5\",\"hostAddress\":\"172.16.10.21\"}},"         \
    "{\"name\":\"web2\",\"properties\":{\"ipAddress\":\"10.0.1.6\",\"hostAddress\":\"172.16.10.22\"}}]}}],"     \
    "\"probes\":[{\"name\":\"Http\",\"properties\":{\"protocol\":\"Tcp\",\"port\":8080,\"numberOfProbes\":2}}]," \
    "\"loadBalancingRules\":[{\"name\":\"Http\",\"properties\":{"                                                 \
    "\"frontendIPConfiguration\":{\"id\":\"/lb/CLB/frontendIPConfigurations/Web\"},"                              \
    "\"backendAddressPool\":{\"id\":\"/lb/CLB/backendAddressPools/Web\"},"                                        \
    "\"probe\":{\"id\":\"/lb/CLB/probes/Http\"},"                                                                 \
    "\"protocol\":\"Tcp\",\"frontendPort\":80,\"backendPort\":8080}}]}}"

/* The same VIP and rule, moved to a new pool on two other hosts (VNI 6001). */
#define LB_JSON_NEW_POOL                                                                                          \
    "{\"name\":\"CLB\",\"properties\":{"                                                                          \
    "\"frontendIPConfigurations\":[{\"name\":\"Web\",\"properties\":{\"publicIPAddress\":{\"ipAddress\":"       \
    "\"20.50.60.10\"}}}],"                                                                                        \
    "\"backendAddressPools\":[{\"name\":\"Blue\",\"properties\":{\"vni\":6001,\"loadBalancerBackendAddresses\":[" \
    "{\"name\":\"blue0\",\"properties\":{\"ipAddress\":\"10.0.2.4\",\"hostAddress\":\"172.16.20.30\"}},"        \
    "{\"name\":\"blue1\",\"properties\":{\"ipAddress\":\"10.0.2.5\",\"hostAddress\":\"172.16.20.31\"}}]}}],"    \
    "\"loadBalancingRules\":[{\"name\":\"Http\",\"properties\":{"                                                 \
    "\"frontendIPConfiguration\":{\"id\":\"/lb/CLB/frontendIPConfigurations/Web\"},"                              \
    "\"backendAddressPool\":{\"id\":\"/lb/CLB/backendAddressPools/Blue\"},"                                       \
    "\"protocol\":\"Tcp\",\"frontendPort\":80,\"backendPort\":8080}}]}}"

#define NODE_HEAD(role, underlay)                                                                                 \
    "{\"role\":\"" role "\",\"mac\":\"02:00:00:00:05:0a\",\"gatewayMac\":\"02:00:00:00:00:01\","                \
    "\"underlay\":\"" underlay "\",\"flowCapacity\":4096,\"maglevSize\":251,"

/* A MUX with the load balancer inline. */
#define MUX_NODE_JSON NODE_HEAD("mux", "172.16.5.10") "\"loadBalancer\":" LB_JSON "}"
/* The host agent of host 172.16.10.21 (runs web1), returning traffic through the MUX. */
#define HOST_NODE_JSON NODE_HEAD("host", "172.16.10.21") "\"muxes\":[\"172.16.5.10\"],\"loadBalancer\":" LB_JSON "}"

/* --- instances -------------------------------------------------------------------------------- */

static inline lb_instance *new_instance(const char *json) {
    char err[256] = "";
    lb_instance *inst = NULL;
    lb_result r = lb_instance_new(json, strlen(json), &inst, err, sizeof err);
    if (r != LB_RESULT_OK) {
        fprintf(stderr, "lb_instance_new: %s: %s\n", lb_result_name(r), err);
        exit(1);
    }
    CHECK(inst != NULL);
    return inst;
}

/* --- frames ----------------------------------------------------------------------------------- */

static inline uint16_t rd16(const uint8_t *p) {
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t rd24(const uint8_t *p) {
    return ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
}

static inline void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* The ones'-complement sum of `len` bytes, folded into 32 bits (RFC 1071). */
static inline uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t len) {
    size_t i;
    for (i = 0; i + 1 < len; i += 2) {
        sum += rd16(p + i);
    }
    if (len & 1) {
        sum += (uint32_t)p[len - 1] << 8;
    }
    return sum;
}

static inline uint16_t csum_finish(uint32_t sum) {
    while (sum >> 16) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return (uint16_t)~sum;
}

/* The TCP/UDP checksum over the IPv4 pseudo-header and the segment at `ip + 20`. */
static inline uint16_t l4_csum_v4(const uint8_t *ip, uint8_t proto, size_t l4_len) {
    uint32_t sum = 0;
    sum = csum_add(sum, ip + 12, 8); /* source and destination addresses */
    sum += proto;
    sum += (uint32_t)l4_len;
    sum = csum_add(sum, ip + 20, l4_len);
    return csum_finish(sum);
}

/* Whether the IPv4 header at `ip` (20 bytes) and its TCP segment verify. */
static inline int ipv4_tcp_checksums_ok(const uint8_t *ip) {
    size_t total = rd16(ip + 2);
    return csum_finish(csum_add(0, ip, 20)) == 0 && l4_csum_v4(ip, 6, total - 20) == 0;
}

/*
 * Writes an Ethernet + IPv4 + TCP frame (20-byte headers, `payload_len` bytes of payload) at `p`
 * and returns its length. Checksums are computed here, independently of the library.
 */
static inline size_t build_tcp4(uint8_t *p, const uint8_t dst_mac[6], const uint8_t src_mac[6], const uint8_t src[4],
                         const uint8_t dst[4], uint16_t sport, uint16_t dport, uint8_t flags, size_t payload_len) {
    uint8_t *ip = p + 14, *tcp = ip + 20;
    size_t total = 20 + 20 + payload_len, i;
    memcpy(p, dst_mac, 6);
    memcpy(p + 6, src_mac, 6);
    wr16(p + 12, 0x0800);
    memset(ip, 0, 20);
    ip[0] = 0x45;
    wr16(ip + 2, (uint16_t)total);
    wr16(ip + 4, 0x1c46); /* identification */
    wr16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = 64;
    ip[9] = 6;
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, dst, 4);
    wr16(ip + 10, csum_finish(csum_add(0, ip, 20)));
    memset(tcp, 0, 20);
    wr16(tcp, sport);
    wr16(tcp + 2, dport);
    tcp[4] = 0x12; /* sequence number 0x12345678 */
    tcp[5] = 0x34;
    tcp[6] = 0x56;
    tcp[7] = 0x78;
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    wr16(tcp + 14, 64240);
    for (i = 0; i < payload_len; i++) {
        tcp[20 + i] = (uint8_t)(i * 7 + 1);
    }
    wr16(tcp + 16, l4_csum_v4(ip, 6, 20 + payload_len));
    return 14 + total;
}

#define TCP_SYN 0x02
#define TCP_ACK 0x10

/* A frame in a caller buffer: `HEADROOM` bytes before it, `BUF_SIZE` in all. */
typedef struct {
    uint8_t buf[BUF_SIZE];
    lb_frame f;
} frame_buf;

static inline void frame_init(frame_buf *fb, size_t len) {
    fb->f.buf = fb->buf;
    fb->f.buf_len = sizeof fb->buf;
    fb->f.start = HEADROOM;
    fb->f.len = len;
}

/* A TCP frame from the client to `dst`:`dport` with source port `sport`, ready in `fb`. */
static inline void client_tcp(frame_buf *fb, const uint8_t dst[4], uint16_t sport, uint16_t dport, uint8_t flags) {
    size_t len;
    memset(fb->buf, 0xee, sizeof fb->buf);
    len = build_tcp4(fb->buf + HEADROOM, MUX_MAC, CLIENT_MAC, CLIENT, dst, sport, dport, flags, 0);
    frame_init(fb, len);
}

/* One frame through `inst`: returns its verdict (and checks the call succeeded). */
static inline lb_verdict process_one(lb_instance *inst, frame_buf *fb, uint32_t now, uint32_t direction) {
    lb_verdict v;
    memset(&v, 0xff, sizeof v);
    CHECK_EQ(lb_process_burst(inst, &fb->f, 1, now, direction, &v), LB_RESULT_OK);
    return v;
}

/* The outer IPv4 destination of a VxLAN frame the MUX wrote (as a host-order number). */
static inline uint32_t outer_dst(const uint8_t *frame) {
    const uint8_t *d = frame + 14 + 16;
    return ((uint32_t)d[0] << 24) | ((uint32_t)d[1] << 16) | ((uint32_t)d[2] << 8) | d[3];
}

static inline uint32_t ip4(unsigned a, unsigned b, unsigned c, unsigned d) {
    return (uint32_t)((a << 24) | (b << 16) | (c << 8) | d);
}

/* Checks that `frame` (`len` bytes) is a VxLAN frame from the MUX, with `vni`, around `inner`. */
static inline void check_vxlan(const uint8_t *frame, size_t len, uint32_t vni, const uint8_t *inner, size_t inner_len) {
    const uint8_t *ip = frame + 14, *udp = ip + 20, *vx = udp + 8;
    CHECK_EQ(len, inner_len + OUTER_V4);
    CHECK(memcmp(frame, GW_MAC, 6) == 0);
    CHECK(memcmp(frame + 6, MUX_MAC, 6) == 0);
    CHECK_EQ(rd16(frame + 12), 0x0800);
    CHECK_EQ(ip[0], 0x45);
    CHECK_EQ(rd16(ip + 2), len - 14);
    CHECK_EQ(ip[9], 17);
    CHECK(memcmp(ip + 12, MUX_IP, 4) == 0);
    CHECK_EQ(csum_finish(csum_add(0, ip, 20)), 0);
    CHECK(rd16(udp) >= 0xc000); /* the entropy source port */
    CHECK_EQ(rd16(udp + 2), 4789);
    CHECK_EQ(rd16(udp + 4), len - 14 - 20);
    CHECK_EQ(vx[0], 0x08);
    CHECK_EQ(rd24(vx + 4), vni);
    CHECK(memcmp(vx + 8, inner, inner_len) == 0);
}

#endif /* LBTEST_H */
