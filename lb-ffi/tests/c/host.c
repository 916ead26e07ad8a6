/*
 * A host agent driven through the C ABI, with a MUX in front of it: the MUX's VxLAN frame for the
 * host's backend is delivered DNATed (VIP:80 -> 10.0.1.5:8080, checksums valid); the backend's
 * answer leaves VxLAN-encapsulated to the MUX with the VIP as its source, and the MUX relays it to
 * the client; a connection the backend opens is SNATed to the VIP. Frames for another host are
 * dropped; probes are refused (a host agent does not steer by health).
 */
#include "lbtest.h"

static const uint8_t WEB1[4] = {10, 0, 1, 5};
static const uint8_t WEB1_MAC[6] = {0x02, 0, 0, 0, 0x0b, 0x05};
static const uint8_t REMOTE[4] = {93, 184, 216, 34};

/* Finds a client port whose SYN the MUX sends to host `want`; leaves the VxLAN frame in `fb`. */
static uint16_t syn_via_mux(lb_instance *mux, frame_buf *fb, uint32_t want, uint16_t from) {
    uint16_t sport;
    for (sport = from; sport < from + 256; sport++) {
        lb_verdict v;
        client_tcp(fb, VIP, sport, 80, TCP_SYN);
        v = process_one(mux, fb, 100, LB_DIRECTION_AUTO);
        CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
        if (outer_dst(fb->buf + fb->f.start) == want) {
            return sport;
        }
    }
    fprintf(stderr, "no flow went to the wanted host\n");
    exit(1);
}

int main(void) {
    lb_instance *mux = new_instance(MUX_NODE_JSON);
    lb_instance *host = new_instance(HOST_NODE_JSON);
    frame_buf fb, tx;
    uint8_t client_frame[BUF_SIZE];
    const uint8_t *ip, *tcp, *inner;
    lb_counters c;
    lb_verdict v;
    size_t client_len, vx_start, vx_len;
    uint16_t sport;
    uint32_t dir;

    CHECK_EQ(lb_instance_role(host), LB_ROLE_HOST);

    /* Through the MUX to this host (172.16.10.21), then into the host agent, both directions. */
    for (dir = LB_DIRECTION_AUTO; dir <= LB_DIRECTION_FROM_FABRIC; dir++) {
        sport = syn_via_mux(mux, &fb, ip4(172, 16, 10, 21), (uint16_t)(50000 + 1000 * dir));
        client_tcp(&tx, VIP, sport, 80, TCP_SYN);
        client_len = tx.f.len;
        memcpy(client_frame, tx.buf + HEADROOM, client_len);
        vx_start = fb.f.start;
        vx_len = fb.f.len;
        v = process_one(host, &fb, 100, dir);
        CHECK_EQ(v.action, LB_ACTION_DELIVER);
        CHECK_EQ(v.backend, 0); /* web1 is the host's only backend: local index 0 */
        CHECK_EQ(v.reason, 0);
        CHECK_EQ(fb.f.start, vx_start + OUTER_V4);
        CHECK_EQ(fb.f.len, vx_len - OUTER_V4);
        CHECK_EQ(fb.f.len, client_len);
        ip = fb.buf + fb.f.start + 14;
        tcp = ip + 20;
        /* DNAT: the destination is the backend's address and port, the rest is the client's. */
        CHECK(memcmp(ip + 16, WEB1, 4) == 0);
        CHECK_EQ(rd16(tcp + 2), 8080);
        CHECK(memcmp(ip + 12, CLIENT, 4) == 0);
        CHECK_EQ(rd16(tcp), sport);
        CHECK(ipv4_tcp_checksums_ok(ip));
        CHECK(memcmp(tcp + 4, client_frame + 14 + 20 + 4, 12) == 0); /* sequence, ack, flags, window */
    }
    pass("vxlan_from_mux_is_delivered_dnated");

    /* The backend answers (SYN-ACK from 10.0.1.5:8080): VxLAN to the MUX, source VIP:80. */
    memset(tx.buf, 0xee, sizeof tx.buf);
    client_len = build_tcp4(tx.buf + HEADROOM, CLIENT_MAC, WEB1_MAC, WEB1, CLIENT, 8080, sport, TCP_SYN | TCP_ACK, 0);
    frame_init(&tx, client_len);
    v = process_one(host, &tx, 101, LB_DIRECTION_FROM_BACKEND);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    CHECK_EQ(tx.f.start, HEADROOM - OUTER_V4);
    CHECK_EQ(tx.f.len, client_len + OUTER_V4);
    ip = tx.buf + tx.f.start + 14;
    CHECK_EQ(rd16(ip - 2), 0x0800);
    CHECK_EQ(ip[9], 17);
    CHECK(memcmp(ip + 12, (const uint8_t[4]){172, 16, 10, 21}, 4) == 0);
    CHECK(memcmp(ip + 16, MUX_IP, 4) == 0);
    CHECK_EQ(rd16(ip + 20 + 2), 4789);
    CHECK_EQ(rd24(ip + 28 + 4), 5001);
    inner = ip + 36;
    CHECK(memcmp(inner + 14 + 12, VIP, 4) == 0);
    CHECK(memcmp(inner + 14 + 16, CLIENT, 4) == 0);
    CHECK_EQ(rd16(inner + 34), 80);
    CHECK_EQ(rd16(inner + 36), sport);
    CHECK(ipv4_tcp_checksums_ok(inner + 14));
    pass("response_goes_back_through_the_mux");

    /* The MUX relays it: decapsulated, towards the gateway, from the MUX's MAC. */
    vx_start = tx.f.start;
    v = process_one(mux, &tx, 101, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    CHECK_EQ(tx.f.start, vx_start + OUTER_V4);
    CHECK_EQ(tx.f.len, client_len);
    CHECK(memcmp(tx.buf + tx.f.start, GW_MAC, 6) == 0);
    CHECK(memcmp(tx.buf + tx.f.start + 6, MUX_MAC, 6) == 0);
    CHECK(memcmp(tx.buf + tx.f.start + 14 + 12, VIP, 4) == 0);
    pass("mux_relays_the_response");

    /* A frame the MUX sent to another host: from the fabric, not for this host. */
    syn_via_mux(mux, &fb, ip4(172, 16, 10, 20), 52000);
    v = process_one(host, &fb, 102, LB_DIRECTION_FROM_FABRIC);
    CHECK_EQ(v.action, LB_ACTION_DROP);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_HOST, v.reason), "not_for_this_host");
    /* From a backend, something that is no IP frame: malformed. */
    memset(tx.buf, 0, sizeof tx.buf);
    frame_init(&tx, 20);
    v = process_one(host, &tx, 102, LB_DIRECTION_FROM_BACKEND);
    CHECK_EQ(v.action, LB_ACTION_DROP);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_HOST, v.reason), "malformed");
    pass("host_drops");

    /* The backend opens a connection: SNATed to the VIP (the rule's default outbound SNAT). */
    memset(tx.buf, 0, sizeof tx.buf);
    client_len = build_tcp4(tx.buf + HEADROOM, GW_MAC, WEB1_MAC, WEB1, REMOTE, 33333, 443, TCP_SYN, 10);
    frame_init(&tx, client_len);
    v = process_one(host, &tx, 103, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    CHECK_EQ(tx.f.len, client_len + OUTER_V4);
    ip = tx.buf + tx.f.start + 14;
    CHECK(memcmp(ip + 16, MUX_IP, 4) == 0);
    inner = ip + 36;
    CHECK(memcmp(inner + 14 + 12, VIP, 4) == 0);
    CHECK(memcmp(inner + 14 + 16, REMOTE, 4) == 0);
    CHECK_EQ(rd16(inner + 36), 443);
    CHECK(ipv4_tcp_checksums_ok(inner + 14));
    pass("backend_connection_is_snated");

    /* Host counters: 2 delivered, 1 response, 1 SNAT; 3 connections (2 entries each). */
    CHECK_EQ(lb_counters_get(host, &c), LB_RESULT_OK);
    CHECK_EQ(c.forwarded, 4);
    CHECK_EQ(c.forwarded_bytes, 3 * 54 + 64);
    CHECK_EQ(c.new_flows, 3);
    CHECK_EQ(c.flows, 6);
    CHECK(c.drop_reasons >= 9 && c.drop_reasons <= LB_MAX_DROP_REASONS);
    CHECK(lb_drop_reason_name(LB_ROLE_HOST, c.drop_reasons - 1) != NULL);
    CHECK(lb_drop_reason_name(LB_ROLE_HOST, c.drop_reasons) == NULL);
    CHECK_EQ(c.drops[0], 1); /* malformed */
    CHECK_EQ(c.drops[1], 1); /* not_for_this_host */
    CHECK_EQ(c.snat_ports_in_use, 1);
    CHECK_EQ(c.tcp_resets, 0);
    /* Expiry past the idle timeout: the connections go (a RST would be counted if asked for). */
    CHECK_EQ(lb_expire(host, 100000, (size_t)-1), LB_RESULT_OK);
    CHECK_EQ(lb_counters_get(host, &c), LB_RESULT_OK);
    CHECK_EQ(c.flows, 0);
    CHECK_EQ(c.snat_ports_in_use, 0);
    pass("host_counters");

    /* What a host agent does not do. */
    CHECK_EQ(lb_report_probe(host, 0, 0, 0, false), LB_RESULT_WRONG_ROLE);
    CHECK_EQ(lb_report_probe(host, 99, 0, 99, true), LB_RESULT_WRONG_ROLE);
    CHECK_EQ(lb_backend_up(host, 0, 0), -1);
    /* An update keeps working on a host too. */
    CHECK_EQ(lb_update(host, LB_JSON, strlen(LB_JSON), NULL, 0), LB_RESULT_OK);
    pass("host_roles");

    lb_instance_free(host);
    lb_instance_free(mux);
    done();
    return 0;
}
